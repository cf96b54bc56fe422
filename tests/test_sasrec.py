"""SASRec baseline: shapes, causality, its training objective, learning a trivial pattern through the
Trainer, ranking output, and loading weights saved before it trained through the Trainer."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gensid.baselines.sasrec import SASRec, align_histories
from gensid.baselines.training import train_sasrec
from gensid.config import SASRecConfig, load_config
from gensid.data import Interactions, leave_one_out
from gensid.data.splits import PAD, Samples, sequence_windows, training_sequences
from gensid.eval.metrics import metrics_from_ranks, rank_of_targets
from gensid.io import save_tensors
from gensid.train import Batch, ItemFeatures
from gensid.train.objectives import SASRecObjective

SMALL = SASRecConfig(hidden=16, layers=2, heads=2, inner=32, dropout=0.1, attn_dropout=0.1)
MAX_LEN = 8


def test_forward_and_logit_shapes() -> None:
    model = SASRec(50, SMALL, MAX_LEN).eval()
    items = torch.tensor([[1, 2, 3, PAD, PAD, PAD, PAD, PAD], [4, 5, 6, 7, 8, 9, 10, 11]])
    hidden = model(items)
    assert hidden.shape == (2, 8, 16)
    assert model.logits(hidden).shape == (2, 8, 50)


def test_causal_mask_later_items_do_not_change_earlier_positions() -> None:
    model = SASRec(50, SMALL, MAX_LEN).eval()
    items = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    changed = items.clone()
    changed[0, 5] = 40
    a, b = model(items), model(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_align_histories_right_aligns_and_truncates() -> None:
    hist = np.array([[PAD, PAD, 7, 8, 9], [1, 2, 3, 4, 5], [PAD] * 5])
    out, lengths = align_histories(hist, 3)
    np.testing.assert_array_equal(out, [[7, 8, 9], [3, 4, 5], [PAD] * 3])
    np.testing.assert_array_equal(lengths, [3, 3, 0])
    wide, _ = align_histories(hist[:, -2:], 4)
    np.testing.assert_array_equal(wide[0], [8, 9, PAD, PAD])


def test_objective_is_the_cross_entropy_of_every_next_item_of_every_window() -> None:
    """The loss equals the mean, over every (window, position), of the cross-entropy of the item after
    the position, each window run through the model alone and right-aligned; absent items get no
    probability."""
    torch.manual_seed(0)
    model = SASRec(20, SMALL, MAX_LEN).eval()  # eval: no dropout, so both computations agree
    seqs = [np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]), np.array([7, 3]), np.array([4, 9, 2])]
    windows = sequence_windows(Interactions(["a", "b", "c"], seqs), MAX_LEN)
    absent = torch.zeros(20, dtype=torch.bool)
    absent[[15, 16]] = True
    batch = Batch.build(windows, np.arange(len(windows)), ItemFeatures(torch.arange(20)[:, None]))
    loss = SASRecObjective(absent)(model, batch, 0.0)["total"]
    expected = []
    for history, target in zip(windows.histories, windows.targets, strict=True):
        items = [int(i) for i in history if i >= 0] + [int(target)]
        hidden = model(torch.tensor([items[:-1]]))[0]  # [T, D], oldest first
        logits = model.logits(hidden).masked_fill(absent, -torch.inf)
        expected += [F.cross_entropy(logits[t], torch.tensor(items[t + 1])) for t in range(len(items) - 1)]
    # every training item but a sequence's first (training: all but the validation and test items)
    assert len(expected) == sum(len(s) - 1 for s in training_sequences(Interactions(["a", "b", "c"], seqs)))
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def _successor_data(num_items: int = 30, users: int = 300) -> Interactions:
    """Item i is always followed by item i + 1 (mod num_items)."""
    rng = np.random.default_rng(0)
    seqs = [(rng.integers(num_items) + np.arange(rng.integers(5, 12))) % num_items
            for _ in range(users)]
    return Interactions([str(u) for u in range(users)], seqs)


def test_learns_successor_pattern_through_the_trainer(tmp_path) -> None:
    torch.set_num_threads(1)
    inter = _successor_data()
    split = leave_one_out(inter, max_history=MAX_LEN)
    cfg = load_config(None, ["baseline.sasrec.hidden=32", "baseline.sasrec.lr=1e-2", "baseline.sasrec.batch_size=64",
                             "baseline.sasrec.epochs=30", "baseline.sasrec.patience=5", "baseline.sasrec.dropout=0.1",
                             "baseline.sasrec.attn_dropout=0.1", "baseline.sasrec.layers=2"])
    model = SASRec(30, cfg.baseline.sasrec, MAX_LEN)
    summary = train_sasrec(model, inter, split, cfg, tmp_path)
    ranks = rank_of_targets(model.rank(split.test, 1), split.test.targets)
    assert metrics_from_ranks(ranks, [1])["recall@1"] > 0.95
    assert 1 <= summary["best_epoch"] <= summary["epochs"] <= 30 and not model.training
    assert (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / "model.safetensors").exists()


def test_rank_returns_valid_ids_and_exclude_history() -> None:
    model = SASRec(12, SMALL, MAX_LEN).eval()
    hist = np.array([[PAD, PAD, 0, 1, 2, 3, 4, 5, 6, 7], [PAD] * 9 + [11]])
    samples = Samples(hist, np.array([8, 0]), np.array([0, 1]))
    ranked = model.rank(samples, 12)
    assert ranked.shape == (2, 12)
    assert ((ranked >= 0) & (ranked < 12)).all()
    assert all(len(set(row)) == 12 for row in ranked)  # a permutation of the catalog
    top = model.rank(samples, 4, exclude_history=True)
    assert top.shape == (2, 4)
    assert set(top[0]) == {8, 9, 10, 11}  # only 4 items are left for the first user
    assert 11 not in top[1]
    # Padding in the history must not change the scores.
    torch.testing.assert_close(model.score(hist[1:, -3:]), model.score(hist[1:]))


def test_a_file_saved_before_sasrec_trained_through_the_trainer_still_loads(tmp_path) -> None:
    """benchmarks/sasrec.py and gensid train --sasrec-minutes wrote the old settings dataclass under
    ``config`` (training fields among them, max_len inside); hybrids may point at such files."""
    torch.manual_seed(0)
    model = SASRec(40, SASRecConfig(hidden=16, layers=1, heads=2, inner=32), max_len=6).eval()
    old_header = {"config": {"hidden": 16, "layers": 1, "heads": 2, "inner": 32, "max_len": 6, "dropout": 0.5,
                             "attn_dropout": 0.5, "lr": 0.001, "weight_decay": 0.0, "batch_size": 256,
                             "max_epochs": 300, "patience": 10, "max_minutes": 45.0, "seed": 0,
                             "eval_batch_size": 1024, "text_items": False},
                  "num_items": 40, "best_epoch": 3}
    save_tensors(tmp_path / "model.safetensors", model.state_dict(), old_header)
    loaded = SASRec.load(tmp_path / "model.safetensors")
    assert loaded.max_len == 6 and loaded.cfg.hidden == 16 and loaded.cfg.layers == 1
    histories = np.array([[-1, -1, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    torch.testing.assert_close(loaded.log_probs(histories), model.log_probs(histories))
