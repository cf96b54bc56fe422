import re
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from gensid.cli import main
from gensid.config import (
    FLAGS,
    ExperimentConfig,
    HistoryInput,
    load_config,
    reference_markdown,
)
from gensid.errors import ConfigError
from gensid.experiment import load_plan
from gensid.methods import DGI, DIGER, NAMES, STE

# ExperimentConfig().to_dict() of the dataclass loader this one replaced: names, defaults, layout
OLD_DEFAULTS = {
    "name": "default",
    "method": {"name": "two_stage"},
    "data": {"source": "movielens-100k", "format": "auto", "task": "rec", "query_field": "categories",
             "max_history": 20, "text_fields": ["title", "brand", "categories"], "max_users": 0,
             "split": "leave_one_out", "cold_share": 0.15},
    "text": {"model": "all-MiniLM-L6-v2", "batch_size": 128},
    "quantizer": {"method": "rqkmeans", "codebook_sizes": [256, 256, 256], "geometry": "euclidean",
                  "euclidean_scale": 1.0, "latent_dim": 64, "disambiguation": False, "hidden_dims": [256, 128],
                  "epochs": 200, "lr": 0.001, "beta": 0.25, "batch_size": 1024,
                  "hard_residual": False, "item_adapter": False, "sids_from": ""},
    "parallel": {"digits": 32, "codebook_size": 256, "opq": True, "whiten": False, "head": "digits",
                 "temperature": 0.07, "loss": "digits", "item_negatives": 0, "item_ids": False, "item_dropout": 0.0, "new_item_offset": None, "embedding_dropout": 0.5,
                 "attention_dropout": 0.5},
    "model": {"d_model": 128, "n_heads": 4, "encoder_layers": 4, "decoder_layers": 4, "d_ff": 512, "dropout": 0.1,
              "history_input": "codes", "embedding_init_std": 0.02},
    "train": {"epochs": 20, "batch_size": 256, "lr": 0.001, "quantizer_lr": 0.001,
              "weight_decay": 0.01, "warmup_steps": 200, "label_smoothing": 0.0, "seed": 0, "max_minutes": 0.0,
              "stop_epoch": 0, "init_from": "", "freeze_index_epoch": 0, "bf16": False, "threads": 0,
              "eval_every": 1, "patience": 0, "bucket_batches": 50},
    "eval": {"beam_size": 20, "ks": [1, 5, 10, 20], "batch_size": 256, "max_users": 0, "verify_weight": 0.0},
    "serve": {"exclude_seen": False},
    "baseline": {"sasrec": {"hidden": 64, "layers": 2, "heads": 2, "inner": 256, "dropout": 0.5, "attn_dropout": 0.5,
                            "text_items": False, "epochs": 300, "lr": 0.001, "weight_decay": 0.0, "batch_size": 256,
                            "patience": 10, "max_minutes": 45.0},
                 "dense": {"dim": 128, "temperature": 0.05, "epochs": 5, "lr": 0.001, "batch_size": 512},
                 "bm25": {"k1": 1.5, "b": 0.75}},
}


def _types(value):
    """The value with every leaf replaced by its type (1 and 1.0 compare equal, int and float do not)."""
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value)


def test_the_defaults_and_their_layout_are_unchanged():
    defaults = ExperimentConfig().to_dict()
    assert defaults == OLD_DEFAULTS and _types(defaults) == _types(OLD_DEFAULTS)
    assert list(defaults) == list(OLD_DEFAULTS)
    assert all(list(defaults[s]) == list(OLD_DEFAULTS[s]) for s in OLD_DEFAULTS if isinstance(OLD_DEFAULTS[s], dict))
    assert yaml.safe_load(ExperimentConfig().to_yaml()) == OLD_DEFAULTS


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ntrain:\n  lr: 1e-3\n  epochs: 3\nquantizer:\n  codebook_sizes: [8, 8]\n")
    cfg = load_config(path, ["train.lr=5e-4", "model.dropout=0.2", "eval.ks=[1, 10]"])
    assert cfg.train.lr == pytest.approx(5e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.quantizer.codebook_sizes == [8, 8]
    assert cfg.model.dropout == 0.2 and cfg.eval.ks == [1, 10]
    assert load_config(None).to_dict() == ExperimentConfig().to_dict()
    # YAML 1.1 reads 1e-3 as a string: accepted where a number is expected, and an int is a float there
    cfg = load_config(None, ["train.quantizer_lr=1e-5", "train.max_minutes=58"])
    assert cfg.train.quantizer_lr == 1e-5 and cfg.train.max_minutes == 58.0 and isinstance(cfg.train.max_minutes, float)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.seed=7", "data.max_history=5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_values_are_checked_when_assigned():
    cfg = load_config(None)
    cfg.data.source = "elsewhere"  # pipeline.run_config does this
    assert cfg.data.source == "elsewhere"
    with pytest.raises(ValueError, match="history_input"):
        cfg.model.history_input = "codes_typo"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  lr_typo: 1\n", "train.lr_typo: unknown field (did you mean 'lr'?); expected one of epochs, "),
        ("trian:\n  lr: 1\n", "trian: unknown section (did you mean 'train'?); expected one of name, method, data, "),
        ("train:\n  epochs: many\n", "train.epochs: expected an integer, got 'many'"),
        ("train:\n  epochs: 2.5\n", "train.epochs: expected an integer, got 2.5"),
        ("train:\n  bf16: 1\n", "train.bf16: expected true or false, got 1"),
        ("quantizer:\n  codebook_sizes: 8\n", "quantizer.codebook_sizes: expected a list"),
        ("quantizer:\n  codebook_sizes: [8, 0]\n", "quantizer.codebook_sizes[1]: expected a value >= 1, got 0"),
        ("train: [1, 2]\n", "train: expected a mapping of fields (a section), got [1, 2]"),
        ("quantizer:\n  method: rqvea\n",
         "quantizer.method: 'rqvea' is not allowed (did you mean 'rqvae'?); expected one of rqkmeans, rqvae"),
        ("method: dgj\n", "method: 'dgj' is not allowed (did you mean 'dgi'?); expected one of two_stage, ste, dgi, "
         "diger, parallel"),
        ("method:\n  name: dgi\n  weight_shairng: false\n",
         "method.weight_shairng: unknown field (did you mean 'weight_sharing'?)"),
        ("method:\n  name: diger\n  decay: frq\n", "method.decay: 'frq' is not allowed (did you mean 'frqud'?)"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {message}")
    assert "\n" not in str(caught.value)


def test_a_bad_override_is_blamed_on_the_override(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochs: 3\n")
    for overrides, message in [
        (["train.nope=1"], "--set train.nope=1: train.nope: unknown field; expected one of"),
        (["quantizer.method=foo"], "--set quantizer.method=foo: quantizer.method: 'foo' is not allowed; "
                                   "expected one of rqkmeans, rqvae"),
        (["train.epochs"], "--set train.epochs: expected KEY=VALUE"),
        (["eval.ks=[1, 2"], "--set eval.ks=[1, 2: eval.ks: the value is not valid YAML"),
        (["train.epochs=3", "train.epochs.x=1"], "--set train.epochs.x=1: train.epochs: not a section"),
        (["eval.beam_size=10"], "--set eval.beam_size=10: eval.beam_size: 10 must be >= the largest K 20"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_config(path, overrides)
        assert str(caught.value).startswith(message), str(caught.value)
    with pytest.raises(ConfigError, match=re.escape("--set train.nope=1: train.nope: unknown field")):
        load_config(None, ["train.nope=1"])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nope.yaml'}: config file not found")):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: line 2, column 1: invalid YAML (expected ',' or ']'")):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(bad)


RULES = [  # (overrides of the defaults, the key at fault, part of the message)
    (["train.freeze_index_epoch=2"], "train.freeze_index_epoch", "needs a joint method (ste, dgi, diger)"),
    (["quantizer.item_adapter=true"], "quantizer.item_adapter", "needs a joint method (ste, dgi, diger) and "
     "quantizer.method rqkmeans"),
    (["method=ste", "quantizer.item_adapter=true", "quantizer.method=rqvae"], "quantizer.item_adapter",
     "not ste and rqvae"),
    (["method=diger", "quantizer.sids_from=runs/x"], "quantizer.sids_from", "needs method two_stage"),
    (["train.init_from=runs/y", "quantizer.sids_from=runs/x"], "quantizer.sids_from", "no train.init_from"),
    (["eval.beam_size=10", "eval.ks=[1, 10, 20]"], "eval.beam_size", "10 must be >= the largest K 20"),
    (["eval.verify_weight=1.0"], "eval.verify_weight", "> 0 only with a joint method"),
    (["method=ste", "eval.verify_weight=-1.0"], "eval.verify_weight", "expected a value >= 0"),
    (["data.format=search_log"], "data.format", "search_log needs data.task search"),
    (["method=parallel", "data.task=search"], "method", "only data.task rec"),
    (["method=parallel", "model.history_input=code_tokens"], "model.history_input", "the parallel model"),
    (["model.history_input=quantized+text"], "model.history_input", "needs a joint method"),
    (["method={name: two_stage, decoder_input: codebook}"], "method.decoder_input", "unknown field"),
    (["data.task=search", "model.history_input=code_tokens"], "model.history_input", "query token"),
    (["method=dgi", "quantizer.method=rqvae", "quantizer.latent_dim=64"],
     "method.weight_sharing", "quantizer.latent_dim (64) must equal model.d_model (128)"),
    (["model.d_model=30"], "model.d_model", "30 must be a multiple of model.n_heads (4)"),
    (["parallel.codebook_size=12"], "parallel.codebook_size", "12 is not a power of two"),
]


@pytest.mark.parametrize(("overrides", "key", "message"), RULES)
def test_rules_across_sections_fail_at_load(overrides, key, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, overrides)
    text = str(caught.value)
    assert text.startswith("--set ") and f": {key}: " in text and message in text, text


def test_a_rule_blames_the_latest_change_of_the_keys_it_involves(tmp_path):
    path = tmp_path / "joint.yaml"
    path.write_text("method: dgi\ntrain:\n  freeze_index_epoch: 2\n")
    assert load_config(path).train.freeze_index_epoch == 2
    with pytest.raises(ConfigError, match=re.escape("--set method=two_stage: train.freeze_index_epoch: 2 "
                                                    "needs a joint method (ste, dgi, diger), not two_stage")):
        load_config(path, ["method=two_stage"])
    path.write_text("train:\n  freeze_index_epoch: 2\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: train.freeze_index_epoch: 2 needs")):
        load_config(path)


def test_extends_deep_merges_a_base_config(tmp_path):
    (tmp_path / "presets").mkdir()
    base = tmp_path / "presets" / "base.yaml"
    base.write_text("name: base\ntrain:\n  epochs: 3\n  lr: 1e-3\nquantizer:\n  codebook_sizes: [8, 8, 8]\n"
                    "eval:\n  ks: [1, 5]\n  beam_size: 5\n")
    child = tmp_path / "presets" / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\ntrain:\n  epochs: 5\nquantizer:\n  codebook_sizes: [16, 16]\n")
    grandchild = tmp_path / "run.yaml"  # relative to its own folder, not the working directory
    grandchild.write_text("extends: presets/child.yaml\ntrain:\n  seed: 4\n")
    cfg = load_config(grandchild, ["train.lr=2e-3"])
    assert cfg.name == "child" and (cfg.train.epochs, cfg.train.seed, cfg.train.lr) == (5, 4, 2e-3)
    assert cfg.quantizer.codebook_sizes == [16, 16]  # lists are replaced, not merged
    assert cfg.eval.ks == [1, 5] and cfg.eval.beam_size == 5
    assert "extends" not in cfg.to_dict() and load_config(base).train.epochs == 3
    # an error in the base names the base
    base.write_text("train:\n  epohcs: 3\n")
    with pytest.raises(ConfigError, match=re.escape(f"{base}: train.epohcs: unknown field (did you mean 'epochs'?)")):
        load_config(grandchild)
    # ... unless a later file set the same key
    child.write_text("extends: base.yaml\ntrain:\n  epohcs: 4\n")
    with pytest.raises(ConfigError, match=re.escape(f"{child}: train.epohcs: unknown field")):
        load_config(grandchild)


def test_extends_errors(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=re.escape(f"{b}: extends: a cycle: {a} -> {b} -> {tmp_path / 'a.yaml'}")):
        load_config(a)
    a.write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends: a cycle"):
        load_config(a)
    a.write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match=re.escape(f"{a}: extends: {tmp_path / 'missing.yaml'}: config file not found")):
        load_config(a)
    a.write_text("extends: [b.yaml]\n")
    with pytest.raises(ConfigError, match=re.escape(f"{a}: extends: expected a config file name")):
        load_config(a)


def test_the_command_reports_bad_input_in_one_line_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gensid", "train", "configs/ml100k.yaml", "--set", "train.nope=1"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --set train.nope=1: train.nope: unknown field; expected one of epochs, batch_size")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _configs_and_plans() -> tuple[list[Path], list[Path]]:
    files = sorted([*Path("configs").glob("*.yaml"), *Path("research/plans").glob("*.yaml")])
    files = [f for f in files if not f.name.startswith("_test_")]  # other tests' temporary plans
    plans = [f for f in files if "variants" in (yaml.safe_load(f.read_text()) or {})]
    return [f for f in files if f not in plans], plans


def test_every_single_run_config_loads():
    configs, _ = _configs_and_plans()
    assert Path("configs/ml100k.yaml") in configs
    for path in configs:
        assert load_config(path).name, path


def test_every_plan_variant_loads_with_each_seed():
    _, plans = _configs_and_plans()
    assert plans
    for path in plans:
        plan = load_plan(path)
        for variant, seed in plan.jobs():
            cfg = load_config(plan.path.parent / variant.config, plan.overrides(variant, seed))
            assert cfg.train.seed == seed


def test_a_bad_plan_variant_names_the_plan_and_the_variant(tmp_path):
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(yaml.safe_dump({
        "name": "p", "dataset": "tiny", "output": str(tmp_path / "out"), "results_file": str(tmp_path / "r.json"),
        "variants": [{"method": "dgi", "config": str(Path("configs/ml100k.yaml").resolve()),
                      "set": ["method=dgi", "method.decay=frqud"]}]}))
    with pytest.raises(ConfigError, match=re.escape(
            f"{plan_path}: variants[0] (dgi), seed 0: --set method.decay=frqud: method.decay: unknown field")):
        load_plan(plan_path)


def test_every_committed_run_config_loads_unchanged():
    runs = sorted([*Path("experiments").glob("**/config.yaml"), *Path("research").glob("**/config.yaml")])
    for path in runs:
        saved = yaml.safe_load(path.read_text())
        loaded = load_config(path).to_dict()
        # every saved value as saved (runs older than a section, e.g. parallel, get its defaults), but the
        # flags a method replaced (from_flags translates them)
        kept = {s: {k: x for k, x in v.items() if k not in FLAGS.get(s, ())} if isinstance(v, dict) else v
                for s, v in saved.items() if s != "loss"}
        assert {s: {k: loaded[s][k] for k in v} if isinstance(v, dict) else loaded[s] for s, v in kept.items()} \
            == kept, path


def test_every_committed_run_is_its_plans_config():
    """A run folder written with the old flags loads as the config its (migrated) plan gives today."""
    _, plans = _configs_and_plans()
    checked = 0
    for path in plans:
        plan = load_plan(path)
        for variant, seed in plan.jobs():
            saved = plan.run_dir(variant, seed) / "config.yaml"
            if saved.exists():
                planned = load_config(plan.path.parent / variant.config, plan.overrides(variant, seed))
                assert load_config(saved) == planned, saved
                checked += 1
    assert checked >= 200 or not Path("research/experiments").exists()


@pytest.mark.parametrize(("flags", "method"), [
    ([], {"name": "two_stage"}),
    (["train.strategy=parallel"], {"name": "parallel"}),
    (["train.strategy=joint", "quantizer.assignment=gumbel_soft", "model.tie_heads=true", "model.logits=cosine",
      "loss.global_cosine=1.0", "loss.codebook=0.25", "loss.infonce=0.1", "loss.diversity=0.01"], DGI().model_dump()),
    (["train.strategy=joint", "quantizer.assignment=argmax", "model.decoder_input=embedding+codebook"],
     {**DGI(soft_gradient_flow=False, weight_sharing=False, scaled_cosine=False, global_cosine=0, codebook=0,
            infonce=0, diversity=0, decoder_input="embedding+codebook").model_dump()}),
    (["train.strategy=joint", "quantizer.assignment=dril", "quantizer.decay=sdud", "loss.codebook=1.0",
      "loss.rqvae_reconstruction=1.0", "loss.infonce=0.1"], DIGER(decay="sdud").model_dump()),
    (["train.strategy=joint", "quantizer.assignment=ste", "loss.codebook=1.0", "loss.infonce=0.1"],
     STE(rqvae_reconstruction=0.0).model_dump()),
])
def test_the_old_flags_load_as_their_method(flags, method):
    assert load_config(None, flags).method.model_dump() == method


def test_old_flags_no_method_stands_for_are_refused():
    with pytest.raises(ConfigError, match="model.tie_heads: True has no equivalent"):
        load_config(None, ["train.strategy=joint", "quantizer.assignment=dril", "model.tie_heads=true"])
    with pytest.raises(ConfigError, match="unknown field"):  # with a method, the old flags are unknown keys
        load_config("configs/beauty-dgi.yaml", ["model.tie_heads=false"])


def test_the_choices_match_the_modules_that_consume_them():
    from gensid.methods.base import DecoderInput
    from gensid.model import parallel, recommender
    from gensid.quantize import residual

    assert get_args(HistoryInput) == recommender.HISTORY_INPUTS
    assert set(get_args(DecoderInput)) < set(recommender.DECODER_INPUTS)
    assert set(parallel.HISTORY_INPUTS) <= set(get_args(HistoryInput))
    assert get_args(DIGER.model_fields["decay"].annotation) == residual.DECAYS


def test_the_config_reference_is_current():
    """docs/config.md is generated: python -m gensid.config docs/config.md"""
    text = reference_markdown()
    for section in ("method", "data", "quantizer", "parallel", "model", "train", "eval", "serve"):
        assert f"## `{section}`" in text
    for name in NAMES:
        assert f"### `method: {name}`" in text
    assert "| `decay` | one of `none`, `sdud`, `frqud` | `frqud` |" in text
    assert Path("docs/config.md").read_text() == text, "stale: run python -m gensid.config docs/config.md"
