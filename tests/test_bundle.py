"""Servable bundles (``gensid export``): served, recommended from and loaded without the data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import gensid.bundle
import gensid.data.loaders
import gensid.data.movielens
import gensid.prepare
from conftest import tiny_ml100k
from gensid.bundle import VERSION, export_bundle, load_bundle
from gensid.cli import app as cli_app
from gensid.config import load_config
from gensid.errors import InputError, RunError
from gensid.live import load_run_with_added_items
from gensid.pipeline import load_run, train_run
from gensid.serve import create_app
from test_serve import JOINT, NEW, PARALLEL

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny trained runs, one per strategy (seconds each); tests copy them before writing."""
    runs = {}
    for name, extra in (("two_stage", []), ("joint", JOINT), ("parallel", PARALLEL)):
        run_dir = tmp_path_factory.mktemp(name)
        train_run(load_config("configs/ml100k.yaml", tiny_ml100k(1) + extra), run_dir, progress=False)
        runs[name] = run_dir
    return runs


def unreachable(*args, **kwargs):
    raise AssertionError("the data was read")


@pytest.fixture
def no_data(monkeypatch):
    """Every way to the raw data (and to building splits) fails from here on."""
    for module, name in ((gensid.prepare, "load_dataset"), (gensid.prepare, "load_search_log"),
                         (gensid.prepare, "next_item_split"), (gensid.data.loaders, "load_dataset"),
                         (gensid.data.movielens, "movielens_100k_dir")):
        monkeypatch.setattr(module, name, unreachable)


def cli_recommend(folder, history: list[str], k: int = 10) -> list[str]:
    """``gensid recommend FOLDER --history ...``: the item ids it prints, best first."""
    result = runner.invoke(cli_app, ["recommend", str(folder), "--history", ",".join(history), "--k", str(k)])
    assert result.exit_code == 0, (result.output, result.exception)
    return re.findall(r"^\s*\d+\. \[(.+?)\]", result.output, re.M)


def served(c: TestClient, history: list[str], k: int = 10) -> list[str]:
    r = c.post("/recommend", json={"history": history, "k": k})
    assert r.status_code == 200, r.text
    return [it["id"] for it in r.json()["items"]]


def refused(args: list[str]) -> str:
    """The one-line message of the InputError the command raises."""
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 1 and isinstance(result.exception, InputError), (result.output, result.exception)
    message = str(result.exception)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("strategy", ["two_stage", "joint", "parallel"])
def test_a_bundle_serves_what_the_run_recommends_without_the_data(trained, tmp_path, request, strategy):
    run_dir = shutil.copytree(trained[strategy], tmp_path / "run")
    bundle = tmp_path / "bundle"
    result = runner.invoke(cli_app, ["export", str(run_dir), str(bundle)])
    assert result.exit_code == 0 and f"serve it with: gensid serve {bundle}" in result.output, result.output
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["format"] == "gensid-bundle" and manifest["version"] == VERSION
    assert manifest["strategy"] == strategy and manifest["items"] == len(load_run(run_dir).dataset.catalog)
    tokenizer = "index/pq.safetensors" if strategy == "parallel" else "quantizer.safetensors"
    assert {"model.safetensors", tokenizer, "index/sids.safetensors", "index/item_text.safetensors",
            "index/sid_stats.json", "items.jsonl", "config.yaml", "metrics.json"} <= set(manifest["files"])
    history = [json.loads(line)["id"] for line in (bundle / "items.jsonl").read_text().splitlines()[:4]]
    expected = cli_recommend(run_dir, history)  # gensid recommend on the original run
    assert len(expected) == 10

    request.getfixturevalue("no_data")
    with pytest.raises(AssertionError, match="the data was read"):
        load_run(run_dir)
    run = load_bundle(bundle)
    assert run.splits is None and len(run.dataset.interactions) == 0 and run.run_dir == bundle
    assert [run.dataset.catalog.item_ids[i] for i in run.recommend(
        [run.dataset.catalog.index_of(i) for i in history], 10, exclude_seen=run.exclude_seen_default)] == expected
    assert cli_recommend(bundle, history) == expected
    with TestClient(create_app(bundle)) as c:
        health = c.get("/health").json()
        assert health["strategy"] == strategy and health["items"] == manifest["items"]
        assert c.app.state.service.run.splits is None
        assert served(c, history) == expected
        r = c.post("/items", json={"items": [{"id": "new-1", "fields": NEW}]})
        assert r.status_code == 201, r.text
        sid = r.json()["items"][0]["sid"]
    assert (bundle / "catalog.sqlite").exists() and not (run_dir / "catalog.sqlite").exists()
    with TestClient(create_app(bundle)) as c:  # a restart replays the bundle's store
        assert c.get("/items/new-1").json()["sid"] == sid and c.get("/health").json()["added_items"] == 1
        answer = served(c, [*history, "new-1"])
    assert cli_recommend(bundle, [*history, "new-1"]) == answer


def test_items_added_to_the_run_come_along_into_its_bundle(trained, tmp_path):
    run_dir = shutil.copytree(trained["two_stage"], tmp_path / "run")
    with TestClient(create_app(run_dir)) as c:
        assert c.post("/items", json={"items": [{"id": "new-1", "fields": NEW}]}).status_code == 201
        sid = c.get("/items/new-1").json()["sid"]
        history = [c.app.state.service.run.dataset.catalog.item_ids[0], "new-1"]
        answer = served(c, history)
    manifest = export_bundle(run_dir, tmp_path / "bundle")
    assert manifest["added_items"] == 1
    run = load_run_with_added_items(tmp_path / "bundle")
    catalog = run.dataset.catalog
    assert len(catalog) == manifest["items"] + 1 and run.sid(catalog.index_of("new-1")) == sid
    assert [catalog.item_ids[i] for i in run.recommend([catalog.index_of(i) for i in history], 10,
                                                        exclude_seen=run.exclude_seen_default)] == answer
    assert "new-1" not in load_bundle(tmp_path / "bundle").dataset.catalog  # the item table: trained items


def test_export_refuses_a_folder_in_use_and_is_atomic(trained, tmp_path, monkeypatch):
    run_dir = trained["two_stage"]
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert refused(["export", str(run_dir), str(full)]) == \
        f"{full}: exists and is not empty; give a new folder for the bundle"
    assert (full / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    export_bundle(run_dir, empty)  # an empty folder is taken
    assert "a bundle already" in refused(["export", str(empty), str(tmp_path / "again")])
    assert "not a run directory" in refused(["export", str(tmp_path), str(tmp_path / "again")])

    def broken(path):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(gensid.bundle, "load_bundle", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        export_bundle(run_dir, tmp_path / "half")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]  # nothing half-written


def test_a_bundle_of_another_version_or_missing_a_file_is_refused_naming_it(trained, tmp_path):
    bundles = {name: tmp_path / name for name in ("two_stage", "parallel")}
    for name, bundle in bundles.items():
        export_bundle(trained[name], bundle)
    other = shutil.copytree(bundles["two_stage"], tmp_path / "v2")
    manifest = json.loads((other / "bundle.json").read_text())
    (other / "bundle.json").write_text(json.dumps({**manifest, "version": VERSION + 1}))
    for args in (["recommend", str(other), "--history", "1"], ["serve", str(other)]):
        message = refused(args)
        assert f"bundle format version {VERSION + 1}, but this gensid" in message
        assert f"reads version {VERSION}" in message
    with pytest.raises(RunError, match="a bundle .gensid export., which holds no data"):
        load_run(bundles["two_stage"])
    for name, missing in (("two_stage", "model.safetensors"), ("two_stage", "quantizer.safetensors"),
                          ("two_stage", "index/sids.safetensors"), ("two_stage", "items.jsonl"),
                          ("two_stage", "bundle.json"), ("parallel", "index/pq.safetensors")):
        broken = shutil.copytree(bundles[name], tmp_path / "broken")
        (broken / missing).unlink()
        assert refused(["recommend", str(broken), "--history", "1"]) == \
            f"{broken}: the bundle misses {missing}; export the run again"
        with pytest.raises(RunError, match=f"misses {missing}"):
            load_bundle(broken)
        shutil.rmtree(broken)
    cut = shutil.copytree(bundles["two_stage"], tmp_path / "cut")
    weights = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert f"{cut / 'model.safetensors'}: {len(weights) // 2} bytes, {len(weights)} when exported" in \
        refused(["recommend", str(cut), "--history", "1"])


def test_gensid_serve_refuses_another_bundle_version_in_one_line(trained, tmp_path):
    bundle = tmp_path / "bundle"
    export_bundle(trained["two_stage"], bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**manifest, "version": 99}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gensid.cli", "serve", str(bundle)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "bundle format version 99" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_serving_a_run_folder_builds_no_data_split(trained, tmp_path, monkeypatch):
    run_dir = shutil.copytree(trained["two_stage"], tmp_path / "run")
    monkeypatch.setattr(gensid.prepare, "next_item_split", unreachable)
    with TestClient(create_app(run_dir)) as c:
        assert c.app.state.service.run.splits is None
        assert len(served(c, c.app.state.service.run.dataset.catalog.item_ids[:3])) == 10
    assert load_run_with_added_items(run_dir).splits is None
