"""``train.init_from``: a run starts from a finished run's item side and weights. Joint training
warm-started from a two-stage run first computes exactly what the two-stage model did.
``quantizer.sids_from``: a two-stage run on the index a joint run learned."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import tiny_ml100k
from gensid.config import load_config
from gensid.errors import ConfigError, RunError
from gensid.eval.evaluate import recommend_items
from gensid.io import load_tensors
from gensid.pipeline import load_init_weights, load_run, prepare, train_run
from gensid.quantize import RQVAE, ItemAdapter
from gensid.report.results import run_rows

TINY = tiny_ml100k(epochs=1)
# joint on the two-stage tokenizer: DGI's soft gradient flow into the RQ-KMeans codebooks, the
# soft codebook vector beside the learned code embedding as decoder input
WARM_JOINT = ["method={name: dgi, weight_sharing: false, scaled_cosine: false, decoder_input: embedding+codebook, "
              "global_cosine: 0, diversity: 0}", "quantizer.euclidean_scale=30", "quantizer.disambiguation=true",
              "train.quantizer_lr=1e-5"]


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("two_stage")
    train_run(load_config("configs/ml100k.yaml", TINY), run_dir, progress=False)
    return run_dir


def test_joint_warm_start_has_the_source_codes_and_rankings(two_stage_run, tmp_path):
    source = load_run(two_stage_run)
    cfg = load_config("configs/ml100k.yaml", [*TINY, *WARM_JOINT, f"train.init_from={two_stage_run}"])
    run = prepare(cfg, tmp_path, progress=False)
    load_init_weights(run.model, two_stage_run)
    run.refresh_index()
    run.model.eval()
    assert np.array_equal(run.index.codes, source.index.codes)
    assert run.model.latent_proj.weight.abs().sum() == 0  # the decoder first ignores the codebook vectors
    test = source.splits.test
    expected = recommend_items(source.model, source.index, test, source.items, 10)
    assert np.array_equal(recommend_items(run.model, run.index, test, run.items, 10), expected)
    # soft assignments: the scale sharpens them, the argmax codes stay
    quantizer = run.model.tokenizer.quantizer
    assert quantizer.euclidean_scale == 30
    assert np.array_equal(quantizer.encode(run.text).numpy(), source.quantizer_codes())


def test_an_item_adapter_starts_as_the_identity_and_then_learns(two_stage_run, tmp_path):
    """RQ-KMeans has no item encoder: without the adapter only the codebooks learn; with it the
    item vectors move too, starting from exactly the source's codes."""
    source = load_run(two_stage_run)
    cfg = load_config("configs/ml100k.yaml", [*TINY, *WARM_JOINT, "quantizer.item_adapter=true",
                                              f"train.init_from={two_stage_run}"])
    run = prepare(cfg, tmp_path / "fresh", progress=False)
    load_init_weights(run.model, two_stage_run)
    run.refresh_index()
    assert isinstance(run.model.tokenizer.encoder, ItemAdapter)
    assert np.array_equal(run.index.codes, source.index.codes)
    assert torch.equal(run.items.item_vectors, run.text)
    train_run(cfg, tmp_path / "warm", progress=False)
    log = [json.loads(line) for line in (tmp_path / "warm" / "log.jsonl").read_text().splitlines()]
    norms = next(r for r in log if r["event"] == "epoch")["terms"]["item_encoder_grad_norm"]
    assert min(norms) > 0
    warm = load_run(tmp_path / "warm")  # the adapter is saved with the model and reloads
    assert warm.model.tokenizer.encoder.delta.weight.abs().sum() > 0
    assert not torch.equal(warm.items.item_vectors, warm.text)
    without = tmp_path / "no_adapter"
    train_run(load_config("configs/ml100k.yaml", [*TINY, *WARM_JOINT, f"train.init_from={two_stage_run}"]),
              without, progress=False)
    epoch = next(json.loads(line) for line in (without / "log.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "epoch")
    assert "item_encoder_grad_norm" not in epoch["terms"]  # nothing to measure, so nothing logged


def test_an_item_adapter_needs_joint_training_on_rqkmeans():
    for wrong in (["quantizer.item_adapter=true"],
                  [*WARM_JOINT, "quantizer.item_adapter=true", "quantizer.method=rqvae"]):
        with pytest.raises(ConfigError, match="quantizer.item_adapter: needs"):  # when the config loads
            load_config("configs/ml100k.yaml", [*TINY, *wrong])


def test_a_verify_weight_needs_joint_training_and_no_sign_flip():
    for wrong in (["eval.verify_weight=1.0"], [*WARM_JOINT, "eval.verify_weight=-1.0"]):
        with pytest.raises(ConfigError, match="eval.verify_weight"):
            load_config("configs/ml100k.yaml", [*TINY, *wrong])


def test_warm_started_training_counts_the_source_minutes(two_stage_run, tmp_path):
    source_dir = tmp_path / "source"  # a copy, deleted below
    shutil.copytree(two_stage_run, source_dir)
    source = load_run(source_dir)
    cfg = load_config("configs/ml100k.yaml", [*TINY, *WARM_JOINT, f"train.init_from={source_dir}"])
    metrics = train_run(cfg, tmp_path / "warm", progress=False)
    assert metrics["init_from"] == str(source_dir)
    before = json.loads((source_dir / "metrics.json").read_text())["train_minutes"]
    assert metrics["init_train_minutes"] == pytest.approx(before)
    assert json.loads((tmp_path / "warm" / "init_from.json").read_text())["init_from"] == str(source_dir)
    row = run_rows("dgi", "warm_start", 0, metrics, tmp_path / "warm", "test")[1]
    assert row["train_minutes"] == pytest.approx(round(metrics["train_minutes"] + before, 2))
    # the finished run loads without its source
    shutil.rmtree(source_dir)
    warm = load_run(tmp_path / "warm")
    assert warm.model.latent_proj.weight.abs().sum() > 0  # it learned to read the codebook vectors
    assert warm.index.codes.shape == source.index.codes.shape


def test_init_from_names_what_is_wrong(two_stage_run, tmp_path):
    other_items = load_config("configs/ml100k.yaml", [*TINY, "data.max_users=50", f"train.init_from={two_stage_run}"])
    with pytest.raises(ConfigError, match=r"data\.max_users \(40 there, 50 here\)"):
        prepare(other_items, tmp_path / "a", progress=False)
    wider = load_config("configs/ml100k.yaml", [*TINY, "model.d_model=64", f"train.init_from={two_stage_run}"])
    with pytest.raises(ConfigError, match="weights do not fit"):
        train_run(wider, tmp_path / "b", progress=False)
    (tmp_path / "empty").mkdir()
    missing = load_config("configs/ml100k.yaml", [*TINY, f"train.init_from={tmp_path / 'empty'}"])
    with pytest.raises(RunError, match="not a run directory"):
        prepare(missing, tmp_path / "c", progress=False)


def test_a_two_stage_run_on_a_learned_index(two_stage_run, tmp_path):
    """``quantizer.sids_from``: a fresh two-stage model on the final index of a joint run."""
    joint_cfg = load_config("configs/ml100k.yaml", [*TINY, *WARM_JOINT, "train.quantizer_lr=1e-2",
                                                    f"train.init_from={two_stage_run}"])
    joint = train_run(joint_cfg, tmp_path / "joint", progress=False)
    learned = load_run(tmp_path / "joint")
    cfg = load_config("configs/ml100k.yaml", [*TINY, f"quantizer.sids_from={tmp_path / 'joint'}"])
    metrics = train_run(cfg, tmp_path / "on_learned", progress=False)
    run = load_run(tmp_path / "on_learned")
    assert np.array_equal(run.quantizer_codes(), learned.quantizer_codes())
    tokenizer = RQVAE(run.text.shape[1], cfg.quantizer)  # the saved tokenizer gives those codes
    tokenizer.load_state_dict(load_tensors(tmp_path / "on_learned" / "quantizer.safetensors")[0])
    assert np.array_equal(tokenizer.encode(run.text).numpy(), learned.quantizer_codes())
    assert metrics["sids_from"] == str(tmp_path / "joint")
    assert metrics["init_train_minutes"] == pytest.approx(joint["train_minutes"] + joint["init_train_minutes"])
    assert not torch.equal(run.model.bos, learned.model.bos)  # the model itself starts fresh


def test_sids_from_names_what_is_wrong(two_stage_run, tmp_path):
    with pytest.raises(ConfigError, match="a two-stage run"):
        prepare(load_config("configs/ml100k.yaml", [*TINY, f"quantizer.sids_from={two_stage_run}"]),
                tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="quantizer.sids_from: needs method two_stage"):
        load_config("configs/ml100k.yaml", [*TINY, *WARM_JOINT, f"quantizer.sids_from={two_stage_run}"])
