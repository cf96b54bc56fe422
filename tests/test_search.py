"""Personalized search data (product-search construction, search logs) and the sparse/dense baselines."""

import numpy as np
import pytest
import torch

from gensid.baselines.bm25 import BM25Search
from gensid.baselines.dense import DenseDualEncoder, context_inputs
from gensid.baselines.training import dense_schedule, train_dense
from gensid.config import DenseConfig, TrainConfig
from gensid.data.catalog import Catalog, Dataset, Interactions
from gensid.data.search import category_query, load_search_log, product_search, time_split
from gensid.data.splits import PAD, LeaveOneOut, Samples
from gensid.errors import DataError
from gensid.io import JsonlLog
from gensid.train import Batch, ItemFeatures
from gensid.train.objectives import DenseObjective

CATEGORIES = ["Beauty, Makeup, Nails, Nail Polish", "Beauty, Skin Care, Face", "Beauty, Hair Care, Hair Care",
              "Beauty, Skin Care, Body", "Beauty, Makeup, Eyes"]


def toy_dataset(sequences):
    fields = [{"title": f"item {i}", "categories": c} for i, c in enumerate(CATEGORIES)]
    return Dataset("toy", Catalog([f"i{i}" for i in range(5)], fields, ["title", "categories"]),
                   Interactions([f"u{u}" for u in range(len(sequences))], [np.array(s) for s in sequences]))


def test_category_query_lowercases_drops_punctuation_and_repeats():
    assert category_query(CATEGORIES[0]) == "beauty makeup nails nail polish"
    assert category_query(CATEGORIES[2]) == "beauty hair care"
    assert category_query("") == ""


def test_product_search_holds_out_the_last_two_purchases():
    splits = product_search(toy_dataset([[0, 1, 2, 3], [4, 0]]), max_history=2)
    assert splits.test.targets.tolist() == [3] and splits.valid.targets.tolist() == [2]
    assert splits.test.queries == ["beauty skin care body"]
    assert splits.test.histories.tolist() == [[1, 2]]  # the last 2 previous items, oldest first
    # training: every earlier purchase of user 0 and both of user 1 (too short to hold out)
    assert sorted(zip(splits.train.users.tolist(), splits.train.targets.tolist(), strict=True)) == [(0, 0), (0, 1), (1, 0), (1, 4)]
    first = splits.train.targets.tolist().index(0)
    assert (splits.train.histories[first] == -1).all()  # a first purchase has an empty history


def test_search_log_split_is_global_by_time_without_future_history(tmp_path):
    rows = ["user,timestamp,query,item"] + [f"u{t % 3},{100 - t},q{t},i{t % 5}" for t in range(10)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    log = load_search_log(tmp_path / "log.csv")
    assert (np.diff(log.timestamps) >= 0).all()
    splits = time_split(log, max_history=10, test_share=0.2, valid_share=0.1)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (7, 1, 2)
    # the test events are the two latest (t = 0, 1 have the largest timestamps)
    assert sorted(splits.test.queries) == ["q0", "q1"]
    # histories only hold earlier clicks: the earliest event of each user has none
    earliest = [splits.train.queries.index(q) for q in ("q9", "q8", "q7")]
    assert all((splits.train.histories[i] == -1).all() for i in earliest)


def test_search_log_errors_name_the_line(tmp_path):
    (tmp_path / "log.csv").write_text("user,timestamp,query,item\nu1,5,shoes,a\nu1,x,socks,b\n")
    with pytest.raises(DataError, match=r"log.csv:3: timestamp 'x'"):
        load_search_log(tmp_path / "log.csv")
    (tmp_path / "log.csv").write_text("user,timestamp,item\nu1,5,a\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['query'\]"):
        load_search_log(tmp_path / "log.csv")


def test_bm25_finds_the_item_whose_text_matches_the_query():
    dataset = toy_dataset([[0, 1, 2]])
    splits = product_search(dataset, max_history=0)
    ranked = BM25Search(dataset.catalog).rank(splits.train, k=5)
    # the category words point at the target; "nails nail polish" only matches item 0
    assert ranked[splits.train.targets.tolist().index(0), 0] == 0


def test_dense_objective_is_the_encoders_in_batch_loss_and_reaches_both_projections():
    """A Trainer batch (history columns trimmed, ids masked) gives the loss of the samples' own context
    inputs; its gradient reaches the item projection and both halves (query, history) of the context's."""
    rng = np.random.default_rng(0)
    text, queries = torch.randn(12, 8), torch.randn(6, 8)
    histories = np.full((6, 5), PAD)
    histories[0, -3:], histories[1, -1:], histories[3, -2:] = [1, 2, 3], [4], [5, 1]  # rows 2, 4, 5: empty
    samples = Samples(histories, rng.integers(0, 12, 6), np.arange(6))
    torch.manual_seed(0)
    model = DenseDualEncoder(8, dim=4)
    rows = np.array([5, 0, 3, 1])
    batch = Batch.build(samples, rows, ItemFeatures(torch.arange(12)[:, None]), queries)
    assert batch.history_items.shape == (4, 3)  # trimmed to the longest history of the batch
    terms = DenseObjective(text)(model, batch, 0.0)
    targets = torch.from_numpy(samples.targets[rows])
    expected = model.loss(context_inputs(queries[rows], histories[rows], text), text[targets], targets)
    torch.testing.assert_close(terms["total"], expected)
    assert terms["in_batch"] is terms["total"]
    terms["total"].backward()
    assert model.item.weight.grad.abs().sum() > 0
    assert model.context.weight.grad[:, :8].abs().sum() > 0 and model.context.weight.grad[:, 8:].abs().sum() > 0


def test_dense_dual_encoder_learns_a_query_to_item_mapping_through_the_trainer(tmp_path):
    rng = np.random.default_rng(0)
    items = torch.from_numpy(rng.standard_normal((50, 16)).astype(np.float32))
    targets = rng.integers(0, 50, 2000)
    queries = items[targets] + 0.3 * torch.randn(2000, 16)  # a noisy view of the target's vector
    samples = Samples(np.full((2000, 3), PAD), targets, np.zeros(2000, dtype=np.int64))
    splits = LeaveOneOut(samples, samples.head(400), samples.head(400))
    torch.manual_seed(0)
    model = DenseDualEncoder(16, dim=16)
    schedule = dense_schedule(DenseConfig(epochs=8, batch_size=128), TrainConfig())
    summary = train_dense(model, splits, {"train": queries, "valid": queries[:400]}, items, schedule, tmp_path)
    losses = [e["loss"] for e in JsonlLog(tmp_path / "log.jsonl").read() if e["event"] == "epoch"]
    assert len(losses) == summary["epochs"] == 8 and losses[-1] < losses[0] / 2 and summary["final_loss"] == losses[-1]
    assert 1 <= summary["best_epoch"] <= 8 and not model.training
    ranked = model.rank(samples, queries, items, k=5)
    assert (ranked[:, 0] == targets).mean() > 0.8
