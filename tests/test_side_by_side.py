"""What gensid train shows beside a run: a small SASRec on the same split, and the test metrics
with each user's seen items excluded (labelled; the published protocol stays the main table)."""

import json

import numpy as np
from typer.testing import CliRunner

from conftest import tiny_ml100k
from gensid.cli import app
from gensid.compare import load_test_ranks
from gensid.errors import InputError
from gensid.eval.metrics import metrics_from_ranks
from gensid.side_by_side import rank_without

runner = CliRunner()


def test_rank_without_drops_the_seen_items_and_ranks_deep_enough():
    order = np.array([5, 4, 3, 2, 1, 0])  # every row ranks the items 5, 4, 3, ... (a most-popular list)
    widths = []

    def rank(rows, width):
        widths.append(width)
        return np.tile(order[:width], (len(rows), 1))

    seen = [np.array([5, 5, 3]), np.array([], dtype=np.int64), np.array([5, 4, 3, 2, 1])]
    out = rank_without(rank, seen, depth=2)
    assert out.tolist() == [[4, 2], [5, 4], [0, -1]]  # the last user has seen all but one item
    assert sorted(widths) == [2, 4, 8]  # depth + distinct seen items, to the next power of two


def test_train_shows_sasrec_and_the_seen_excluded_metrics_beside_the_run(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", "configs/ml100k.yaml", "--run-dir", str(run_dir), "--examples", "1", "--sasrec-minutes", "0.05"]
    for item in tiny_ml100k(epochs=1):
        args += ["--set", item]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((run_dir / "sasrec" / "metrics.json").read_text())
    label = f"sasrec ({summary['epochs']} epochs, {summary['train_minutes']:.1f} min)"
    main, excluded = result.output.split("each user's seen items excluded")
    assert "two_stage (gensid)" in main and label in main and "most_popular" in main
    assert label in excluded and "most_popular" in excluded
    # configs/ml100k.yaml has serve.exclude_seen: the example answers hold none of the user's items
    assert "none of the" in excluded and "seen (serve.exclude_seen)" in excluded
    # SASRec's test ranks are kept, so gensid compare pairs it with the run
    ranks, _, depth = load_test_ranks(run_dir / "sasrec")
    assert metrics_from_ranks(ranks, [5, 10]) == summary["test"] and depth == 10
    # a second train on the finished folder reuses the SASRec it trained
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and label in again.output
    assert json.loads((run_dir / "sasrec" / "metrics.json").read_text()) == summary


def test_sasrec_beside_a_search_run_is_refused_before_anything_is_written(tmp_path):
    result = runner.invoke(app, ["train", "configs/ml100k.yaml", "--run-dir", str(tmp_path / "run"),
                                 "--sasrec-minutes", "1", "--set", "data.task=search", "--set", "data.query_field=class"])
    assert result.exit_code == 1 and isinstance(result.exception, InputError)
    assert str(result.exception).startswith("--sasrec-minutes 1: SASRec is a recommendation baseline")
    assert not (tmp_path / "run").exists()
