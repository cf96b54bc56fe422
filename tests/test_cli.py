"""Bad command-line input: an :class:`InputError` naming the option and the value (``gensid``
prints it as one line and exits 1), never typer's usage box (exit 2); a config that fails
validation writes nothing."""

import shutil
import sys

import pytest
import yaml
from typer.testing import CliRunner

from conftest import tiny_ml100k
from gensid.cli import app, main
from gensid.errors import ConfigError, DataError, InputError, RunError

runner = CliRunner()


def train_args(run_dir, *overrides: str) -> list[str]:
    args = ["train", "configs/ml100k.yaml", "--run-dir", str(run_dir), "--examples", "0"]
    for item in [*tiny_ml100k(epochs=1), *overrides]:
        args += ["--set", item]
    return args


def refused(args: list[str], error: type[InputError] = InputError) -> str:
    """The message of the InputError the command raises (what ``gensid`` prints after ``error: ``)."""
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and isinstance(result.exception, error), (result.output, result.exception)
    assert "Usage" not in result.output
    message = str(result.exception)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A bad config writes nothing; the corrected command then trains (a few seconds)."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    message = refused(train_args(run_dir, "quantizer.method=foo"), ConfigError)
    assert message.startswith("--set quantizer.method=foo: quantizer.method: 'foo' is not allowed; "
                              "expected one of rqkmeans, rqvae")
    assert not run_dir.exists()
    result = runner.invoke(app, train_args(run_dir))
    assert result.exit_code == 0, result.output
    assert (run_dir / "metrics.json").exists()
    return run_dir


def test_a_config_that_cannot_run_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    for overrides, error, message in [
        (["train.freeze_index_epoch=1"], ConfigError, "--set train.freeze_index_epoch=1: train.freeze_index_epoch: "),
        (["eval.ks=[5, 50]"], ConfigError, "eval.beam_size: 10 must be >= the largest K 50"),
        ([f"data.source={tmp_path / 'no-data'}"], DataError, f"data.source {tmp_path / 'no-data'}: no such file"),
        (["text.model=no-such-model"], ConfigError, "text model 'no-such-model': expected one of"),
        ([f"train.init_from={tmp_path / 'no-run'}"], InputError, "not a run directory"),
    ]:
        assert message in refused(train_args(run_dir, *overrides), error)
        assert not run_dir.exists(), overrides


def test_bad_options_name_the_option_and_the_value(tiny_run):
    assert refused(["evaluate", str(tiny_run), "--split", "tset"]) == "--split 'tset': expected valid or test"
    assert refused(["recommend", str(tiny_run), "--history", "1", "--k", "0"]) == "--k 0: expected at least 1"
    assert refused(["recommend", str(tiny_run), "--history", "50,,172"]).startswith(
        "--history '50,,172': item 2 is empty")
    assert refused(["recommend", str(tiny_run), "--history", " "]).startswith(
        "--history ' ': give at least one item id")
    assert refused(["recommend", str(tiny_run), "--history", "1,no-such-item"]) == \
        "--history: unknown item id 'no-such-item' (not in the run's catalog)"
    assert refused(["experiment", "configs/ml100k.yaml", "--shard", "2/2"]).startswith("--shard '2/2': expected i/n")
    good = runner.invoke(app, ["recommend", str(tiny_run), "--history", "1, 2", "--k", "3"])
    assert good.exit_code == 0 and len(good.output.strip().splitlines()) == 3


def test_the_command_prints_one_line_and_exits_1(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["gensid", "recommend", "no-run", "--history", "50,,172"])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == ("error: --history '50,,172': item 2 is empty; give comma-separated item ids, "
                           "e.g. --history 50,172")


def edited(run_dir, tmp_path, field: str, value) -> str:
    """A copy of ``run_dir`` whose config.yaml says ``field: value`` (edited after training)."""
    copy = shutil.copytree(run_dir, tmp_path / "edited")
    config = yaml.safe_load((copy / "config.yaml").read_text())
    section, name = field.split(".")
    config[section][name] = value
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    return str(copy)


@pytest.mark.parametrize("field, value, start, detail", [
    # the tiny run: d_model 32, one encoder and one decoder layer, codebooks [16, 16]
    ("model.d_model", 16, "model.safetensors does not fit {run}/config.yaml: model.d_model? ",
     "history_pos: weights [20, 32] vs model [20, 16]"),
    ("model.encoder_layers", 2, "model.safetensors does not fit {run}/config.yaml: model.encoder_layers? ",
     "model has no weights for encoder.layers.1."),
    ("quantizer.codebook_sizes", [8, 8], "quantizer.safetensors does not fit {run}/config.yaml: "
     "quantizer.codebook_sizes? ", "quantizer.usage_0: weights [16] vs model [8]"),
])
def test_a_config_edited_after_training_stops_recommend_and_serve_in_one_line(tiny_run, tmp_path, field, value,
                                                                                start, detail):
    run = edited(tiny_run, tmp_path, field, value)
    for command in (["recommend", run, "--history", "1,2"], ["serve", run, "--port", "1"]):
        message = refused(command, RunError)
        assert message.startswith(f"{run}/" + start.format(run=run)), message
        assert detail in message and "edited after training" in message


def test_experiment_help_points_to_research_plans():
    result = runner.invoke(app, ["experiment", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "research/plans/" in result.output and "configs/" not in result.output


def test_gensid_warnings_print_as_one_line(capsys):
    from gensid.cli import _show_warning
    from gensid.errors import GensidWarning

    _show_warning(GensidWarning("quantizer.codebook_sizes [64]: too few items"), GensidWarning, "x.py", 3)
    assert capsys.readouterr().err == "warning: quantizer.codebook_sizes [64]: too few items\n"
