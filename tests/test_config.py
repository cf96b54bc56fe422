import re
import sys

import pytest

from gensid.cli import main
from gensid.config import ExperimentConfig, load_config
from gensid.errors import ConfigError
from gensid.pipeline import prepare


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: x\ntrain:\n  lr: 1e-3\n  epochs: 3\nquantizer:\n  codebook_sizes: [8, 8]\n")
    cfg = load_config(path, ["train.lr=5e-4", "model.logits=cosine", "eval.ks=[1, 10]"])
    assert cfg.train.lr == pytest.approx(5e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 3 and cfg.quantizer.codebook_sizes == [8, 8]
    assert cfg.model.logits == "cosine" and cfg.eval.ks == [1, 10]
    assert load_config(None).to_dict() == ExperimentConfig().to_dict()


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["train.seed=7", "data.max_history=5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("text", "override", "message"),
    [
        ("train:\n  lr_typo: 1\n", None, "train: unknown field(s) ['lr_typo']"),
        ("train:\n  epochs: many\n", None, "train.epochs: expected int"),
        ("", "train.epochs", "expected KEY=VALUE"),
        ("quantizer:\n  codebook_sizes: 8\n", None, "quantizer.codebook_sizes: expected a list"),
        ("train: [1, 2]\n", None, "train: expected a mapping"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, override, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path, [override] if override else [])


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_the_command_reports_bad_input_in_one_line_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gensid", "train", "configs/ml100k.yaml", "--set", "train.nope=1"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: configs/ml100k.yaml: train: unknown field(s) ['nope']")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_beam_smaller_than_the_largest_k_is_refused_before_training(tmp_path):
    cfg = load_config("configs/ml100k.yaml", ["eval.beam_size=10", "eval.ks=[1, 10, 20]"])
    with pytest.raises(ConfigError, match=re.escape("eval.beam_size 10 must be >= the largest K 20")):
        prepare(cfg, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing written
