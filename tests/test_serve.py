"""The HTTP service over tiny trained MovieLens runs (two-stage and joint)."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from gensid.baselines.sasrec import SASRec
from gensid.cli import app as cli_app
from gensid.compare import load_test_ranks, target_popularity_buckets
from gensid.config import SASRecConfig, load_config
from gensid.data.movielens import movielens_100k_dir
from gensid.errors import InputError, RunError
from gensid.fusion import Hybrid, fit_hybrid
from gensid.fusion.hybrid import known_items_only, load_scorer
from gensid.live import load_run_with_added_items
from gensid.pipeline import load_run, train_run
from gensid.serve import create_app
from gensid.serve.batcher import MicroBatcher, Overloaded
from gensid.serve.guard import check_exposure, is_loopback

TINY = ["data.max_users=40", "train.epochs=1", "train.threads=1", "train.batch_size=64", "model.d_model=32",
        "model.d_ff=64", "model.encoder_layers=1", "model.decoder_layers=1", "quantizer.codebook_sizes=[16,16]",
        "eval.ks=[5,10]", "eval.beam_size=10"]
JOINT = ["method=dgi", "quantizer.method=rqvae", "quantizer.latent_dim=32", "quantizer.hidden_dims=[32]",
         "quantizer.epochs=2", "quantizer.geometry=cosine"]
SEARCH = ["data.task=search", "data.query_field=class", "data.max_history=10"]
PARALLEL = ["method=parallel", "parallel.digits=8", "parallel.codebook_size=16", "parallel.opq=false",
            "parallel.head=shared", "parallel.loss=items"]
NEW = {"movie_title": "A Brand New Space Opera", "release_year": "2026", "class": "Sci-Fi Adventure"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Trained tiny runs, one per strategy (a few seconds each); tests work on copies."""
    runs = {}
    for name, extra in (("two_stage", []), ("joint", JOINT), ("search", SEARCH),
                        ("joint_disambiguation", [*JOINT, "quantizer.disambiguation=true"]),
                        ("parallel", PARALLEL)):
        run_dir = tmp_path_factory.mktemp(name)
        train_run(load_config("configs/ml100k.yaml", TINY + extra), run_dir, progress=False)
        runs[name] = run_dir
    return runs


@pytest.fixture
def run_dir(trained, tmp_path):
    return shutil.copytree(trained["two_stage"], tmp_path / "run")


def client(run_dir, **kwargs) -> TestClient:
    return TestClient(create_app(run_dir, **kwargs))


def full_beam(c: TestClient, history: list[str]) -> list[str]:
    """Beam search as wide as the catalog (exhaustive): what the model can retrieve at all."""
    svc = c.app.state.service
    svc.run.cfg.eval.beam_size = len(svc.run.dataset.catalog)
    ranked = svc.recommend_batch([[svc.run.dataset.catalog.index_of(i) for i in history]])[0]
    return [svc.run.dataset.catalog.item_ids[i] for i in ranked]


def test_health_and_recommend_return_ranked_items_with_titles(run_dir):
    with client(run_dir) as c:
        health = c.get("/health").json()
        catalog = c.app.state.service.run.dataset.catalog
        assert health["status"] == "ok" and health["items"] == len(catalog) and health["added_items"] == 0
        history = catalog.item_ids[:3]
        r = c.post("/recommend", json={"history": history, "k": 5})
        assert r.status_code == 200
        items = r.json()["items"]
        assert [it["rank"] for it in items] == [1, 2, 3, 4, 5]
        assert all(it["title"] == catalog.title(catalog.index_of(it["id"])) for it in items)
        run = c.app.state.service.run
        assert [it["id"] for it in items] == [catalog.item_ids[i] for i in run.recommend(
            [catalog.index_of(i) for i in history], 5, run.exclude_seen_default)]


@pytest.mark.parametrize(("path", "body", "status", "says"), [
    ("/recommend", {"history": ["no-such-item"], "k": 5}, 404, "no-such-item"),
    ("/recommend", {"history": [], "k": 5}, 422, "history"),
    ("/recommend", {"history": ["1"] * 1001, "k": 5}, 422, "history"),
    ("/recommend", {"history": ["1"], "k": 0}, 422, "k"),
    ("/recommend", {"history": ["1"], "k": 11}, 422, "beam size 10"),
    ("/recommend", {"history": ["1"], "k": 101}, 422, "k"),
    ("/recommend", {"history": "1"}, 422, "history"),
    ("/items", {"items": []}, 422, "items"),
    ("/items", {"items": [{"id": "x", "fields": {"movie_title": "A"}}] * 2}, 422, "repeat"),
    ("/items", {"items": [{"id": "1", "fields": {"movie_title": "A"}}]}, 409, "'1'"),
    ("/items", {"items": [{"id": "x", "fields": {"plot": "A"}}]}, 422, "movie_title"),
    ("/items", {"items": [{"id": "", "fields": {"movie_title": "A"}}]}, 422, "id"),
    ("/items", {"items": [{"id": "x", "fields": {"movie_title": 3}}]}, 422, "movie_title"),
    ("/items", {"items": [{"id": "x", "fields": {"movie_title": "A" * 2001}}]}, 422, "movie_title"),
    ("/items", {"items": [{"id": "x", "fields": {"movie_title": "   ", "class": "Drama"}}]}, 422, "movie_title"),
    ("/items", {"items": [{"id": "x" * 201, "fields": {"movie_title": "A"}}]}, 422, "id"),
    ("/recommend", {"history": ["1"], "k": True}, 422, "k"),
    ("/recommend", {"history": ["1"], "k": 5.0}, 422, "k"),
    ("/recommend", {"history": ["1"], "k": "5"}, 422, "k"),
    ("/recommend", {"history": ["1"], "exclude_seen": "yes"}, 422, "exclude_seen"),
    ("/recommend", {"history": ["1" * 201]}, 422, "history"),
])
def test_bad_requests_get_a_4xx_naming_what_is_wrong(run_dir, path, body, status, says):
    with client(run_dir) as c:
        r = c.post(path, json=body)
        assert r.status_code == status, r.text
        assert says in r.text
        assert c.get("/health").json()["added_items"] == 0


def test_unknown_item_is_404(run_dir):
    with client(run_dir) as c:
        r = c.get("/items/no-such-item")
        assert r.status_code == 404 and "no-such-item" in r.text
        assert c.get("/items/1").json()["added"] is False


@pytest.mark.parametrize("strategy", ["two_stage", "joint", "joint_disambiguation"])
def test_added_item_is_retrievable_at_once_and_after_a_restart(trained, tmp_path, strategy):
    run_dir = shutil.copytree(trained[strategy], tmp_path / "run")
    with client(run_dir) as c:
        history = c.app.state.service.run.dataset.catalog.item_ids[:3]
        assert "new-1" not in full_beam(c, history)
        r = c.post("/items", json={"items": [{"id": "new-1", "fields": NEW}]})
        assert r.status_code == 201, r.text
        sid = r.json()["items"][0]["sid"]
        assert c.get("/items/new-1").json() == {"id": "new-1", "title": NEW["movie_title"], "fields": NEW,
                                                "sid": sid, "added": True}
        assert "new-1" in full_beam(c, history)
        assert c.post("/recommend", json={"history": [*history, "new-1"], "k": 5}).status_code == 200
    with client(run_dir) as c:  # a new process would see the same: the app reloads RUN_DIR
        assert c.get("/health").json()["added_items"] == 1
        assert c.get("/items/new-1").json()["sid"] == sid
        assert "new-1" in full_beam(c, history)


def test_a_collision_gets_the_next_disambiguation_code_and_widens_the_index_not_the_model(run_dir):
    with client(run_dir) as c:
        run = c.app.state.service.run
        size = run.model.code_sizes[-1]
        heads = run.model.heads[-1].weight.clone()
        # an item of the largest collision group: its disambiguation code is the last one
        crowded = int(np.flatnonzero(run.index.codes[:, -1] == size - 1)[0])
        twin = run.dataset.catalog.fields[crowded]
        r = c.post("/items", json={"items": [{"id": "twin-1", "fields": twin}, {"id": "twin-2", "fields": twin}]})
        sids = [it["sid"] for it in r.json()["items"]]
        assert sids == [[*run.index.codes[crowded, :-1].tolist(), size],
                        [*run.index.codes[crowded, :-1].tolist(), size + 1]]
        assert run.index.sizes[-1] == size + 2 and run.model.code_sizes[-1] == size
        assert torch.equal(run.model.heads[-1].weight, heads)  # the model is as trained
        # both twins score as the item they copy, and read as it in a history
        twins = [run.dataset.catalog.index_of(i) for i in ("twin-1", "twin-2")]
        assert run.index.score_code(np.array(twins)).tolist() == [size - 1] * 2
        assert run.items.codes[twins].tolist() == [run.index.codes[crowded].tolist()] * 2
        history = run.dataset.catalog.item_ids[:2]
        assert {"twin-1", "twin-2"} <= set(full_beam(c, history))
        assert c.post("/recommend", json={"history": [*history, "twin-2"]}).status_code == 200
    with client(run_dir) as c:
        run = c.app.state.service.run
        assert c.get("/items/twin-2").json()["sid"] == sids[1]
        assert run.index.score_code(np.array([run.dataset.catalog.index_of("twin-2")])).tolist() == [size - 1]


def test_concurrent_recommends_share_model_calls_and_get_their_own_answers(run_dir):
    with client(run_dir, max_batch=16, max_wait_ms=300) as c:
        ids = c.app.state.service.run.dataset.catalog.item_ids
        histories = [ids[i:i + 1 + i % 4] for i in range(12)]
        alone = [c.post("/recommend", json={"history": h, "k": 5}).json() for h in histories]
        batcher = c.app.state.batcher
        calls = len(batcher.batch_sizes)
        with ThreadPoolExecutor(12) as pool:
            together = list(pool.map(lambda h: c.post("/recommend", json={"history": h, "k": 5}).json(), histories))
        assert together == alone
        sizes = list(batcher.batch_sizes)[calls:]
        assert sum(sizes) == 12 and len(sizes) < 12 and max(sizes) > 1


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)
item_ids = st.text(max_size=8) | st.sampled_from(["1", "50", "181"])
recommend_bodies = st.fixed_dictionaries({"history": st.lists(item_ids, max_size=6) | json_values,
                                          "k": st.integers(-5, 150) | json_values})
item_bodies = st.fixed_dictionaries({"items": st.lists(st.fixed_dictionaries(
    {"id": item_ids, "fields": st.dictionaries(st.sampled_from(["movie_title", "class", "x"]), st.text(max_size=20),
                                               max_size=3) | json_values}), max_size=3) | json_values})


def test_fuzzed_requests_never_get_a_5xx(run_dir):
    with client(run_dir, max_wait_ms=0) as c:
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(["/recommend", "/items"]), recommend_bodies | item_bodies | json_values)
        def check(path, body):
            assert c.post(path, json=body).status_code < 500

        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.text(min_size=1, max_size=20))
        def check_get(item_id):
            assert c.get("/items/" + quote(item_id, safe="")).status_code < 500

        check()
        check_get()
        assert c.get("/health").status_code == 200


def test_search_ranks_by_query_and_history_and_each_endpoint_refuses_the_other_task(trained, tmp_path):
    run_dir = shutil.copytree(trained["search"], tmp_path / "search")
    with client(run_dir) as c:
        catalog = c.app.state.service.run.dataset.catalog
        history = catalog.item_ids[:3]
        answers = {}
        for query in ("comedy", "horror thriller", "children's animation"):
            r = c.post("/search", json={"query": query, "history": history, "k": 10})
            assert r.status_code == 200, r.text
            answers[query] = [it["id"] for it in r.json()["items"]]
            assert len(answers[query]) == len(set(answers[query])) == 10
        assert len({tuple(a) for a in answers.values()}) > 1  # the query changes the ranking
        # the same ranking as the run's own batch path with the encoder's query vector
        svc = c.app.state.service
        expected = svc.search_batch([("comedy", [catalog.index_of(i) for i in history])])[0][:10]
        assert answers["comedy"] == [catalog.item_ids[i] for i in expected]
        assert c.post("/search", json={"query": "comedy", "k": 5}).status_code == 200  # no history yet
        for body, says in (({"query": " ", "k": 5}, "query"), ({"query": "comedy", "history": ["nope"]}, "nope"),
                           ({"query": "comedy", "k": 11}, "beam size")):
            r = c.post("/search", json=body)
            assert r.status_code in (404, 422) and says in r.text, (body, r.text)
        r = c.post("/recommend", json={"history": history, "k": 5})
        assert r.status_code == 422 and "/search" in r.text
    with client(shutil.copytree(trained["two_stage"], tmp_path / "rec")) as c:
        r = c.post("/search", json={"query": "comedy", "k": 5})
        assert r.status_code == 422 and "/recommend" in r.text


@pytest.mark.parametrize("strategy", ["two_stage", "joint_disambiguation"])
def test_a_duplicate_of_a_trained_item_gets_the_next_free_disambiguation_code(trained, tmp_path, strategy):
    run_dir = shutil.copytree(trained[strategy], tmp_path / "run")
    with client(run_dir) as c:
        run = c.app.state.service.run
        first = run.dataset.catalog.item_ids[0]
        twin = dict(run.dataset.catalog.fields[0])
        r = c.post("/items", json={"items": [{"id": "twin", "fields": twin}]})
        assert r.status_code == 201, r.text
        sid, original = r.json()["items"][0]["sid"], c.get(f"/items/{quote(first)}").json()["sid"]
        assert sid[:-1] == original[:-1] and sid[-1] != original[-1]
        assert len(sid) == len(run.cfg.quantizer.codebook_sizes) + 1
        assert "twin" in full_beam(c, run.dataset.catalog.item_ids[1:4])


def test_a_hybrid_folder_serves_the_mixture_and_scores_added_items(trained, tmp_path):
    """gensid serve HYBRID_DIR: search with the dense encoder, which also scores items added later."""
    run = load_run(shutil.copytree(trained["search"], tmp_path / "search"))
    hybrid, _ = fit_hybrid(run, weights=[0.5], dense_epochs=1)
    hybrid.save(tmp_path / "hybrid")
    with client(tmp_path / "hybrid") as c:
        assert c.get("/health").json()["hybrid"] == "dense, weight 0.5"
        svc = c.app.state.service
        catalog = svc.run.dataset.catalog
        history = catalog.item_ids[:3]
        # the run's serve.exclude_seen (configs/ml100k.yaml: true) would drop the history's items from the answer
        r = c.post("/search", json={"query": "comedy", "history": history, "k": 10, "exclude_seen": False})
        assert r.status_code == 200, r.text
        samples = svc.run.history_samples([[catalog.index_of(i) for i in history]])
        query = torch.from_numpy(svc.text_encoder().encode(["comedy"], progress=False))
        assert [it["id"] for it in r.json()["items"]] == [catalog.item_ids[i] for i in svc.hybrid.rank(samples, query)[0]]
        assert c.post("/items", json={"items": [{"id": "new-1", "fields": NEW}]}).status_code == 201
        log_probs = svc.hybrid.catalog_log_probs(samples, np.arange(1), query)
        assert log_probs.shape == (1, len(catalog)) and torch.isfinite(log_probs[0, -1])  # the new item too
        assert c.post("/search", json={"query": NEW["class"], "history": ["new-1"], "k": 5}).status_code == 200


def test_a_sasrec_hybrid_gives_added_items_no_catalog_probability(trained, tmp_path):
    run = load_run(shutil.copytree(trained["two_stage"], tmp_path / "rec"))
    sasrec = SASRec(len(run.dataset.catalog), SASRecConfig(hidden=16, layers=1, heads=2, inner=32), max_len=20)
    (tmp_path / "sasrec").mkdir()
    sasrec.save(tmp_path / "sasrec" / "model.safetensors")
    Hybrid(run, sasrec.eval(), 0.7, str(tmp_path / "sasrec")).save(tmp_path / "hybrid")
    with client(tmp_path / "hybrid") as c:
        svc = c.app.state.service
        assert isinstance(svc.hybrid.scorer, SASRec) and svc.hybrid.weight == 0.7
        assert c.post("/items", json={"items": [{"id": "new-1", "fields": NEW}]}).status_code == 201
        catalog = svc.run.dataset.catalog
        history = [catalog.item_ids[0], "new-1"]  # SASRec has never seen new-1: it reads [item 0]
        r = c.post("/recommend", json={"history": history, "k": 10})
        assert r.status_code == 200, r.text
        samples = svc.run.history_samples([[catalog.index_of(i) for i in history]])
        log_probs = svc.hybrid.catalog_log_probs(samples, np.arange(1), None)
        assert log_probs.shape == (1, len(catalog)) and log_probs[0, -1] == float("-inf")
        alone = svc.hybrid.scorer.log_probs(svc.run.history_samples([[0]]).histories)
        assert torch.allclose(log_probs[:, :-1], alone)


def test_a_sasrec_hybrid_moves_with_its_parts_and_loads_from_any_directory(trained, tmp_path, monkeypatch):
    work = tmp_path / "before"
    run = load_run(shutil.copytree(trained["two_stage"], work / "rec"))
    (work / "sasrec").mkdir()
    SASRec(len(run.dataset.catalog), SASRecConfig(hidden=16, layers=1, heads=2, inner=32), max_len=20).save(
        work / "sasrec" / "model.safetensors")
    monkeypatch.chdir(work)
    Hybrid(run, load_scorer("sasrec", run), 0.7, "sasrec").save("hybrid")  # a relative --sasrec, as typed
    shutil.move(work, tmp_path / "after")
    monkeypatch.chdir(tmp_path)
    loaded = Hybrid.load(tmp_path / "after" / "hybrid")
    assert isinstance(loaded.scorer, SASRec) and loaded.weight == 0.7
    assert loaded.run.run_dir.resolve() == (tmp_path / "after" / "rec").resolve()


def test_a_run_trained_on_a_relative_data_path_loads_from_any_directory(trained, tmp_path, monkeypatch):
    """A run keeps ``data.source`` as typed, relative to where training ran (the project folder);
    loading it from elsewhere finds the data from the folders above the run."""
    project = tmp_path / "project"
    shutil.copytree(movielens_100k_dir(), project / "data" / "ml-100k")
    run_dir = shutil.copytree(trained["two_stage"], project / "runs" / "rec")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["data"].update(source="data/ml-100k", format="recbole")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(project)
    run = load_run("runs/rec")
    expected = run.rank(run.splits.test)
    monkeypatch.chdir(tmp_path)
    moved = load_run(project / "runs" / "rec")
    assert moved.cfg.data.source == str(project / "data" / "ml-100k")
    assert np.array_equal(moved.rank(moved.splits.test), expected)
    ranks, digest, _ = load_test_ranks(run_dir)  # gensid compare --by-popularity reads the data too
    assert len(target_popularity_buckets([str(run_dir)], digest)) == len(ranks)
    shutil.move(project / "data", tmp_path / "elsewhere")
    with pytest.raises(RunError, match="data.source 'data/ml-100k' is found neither"):
        load_run(project / "runs" / "rec")


def test_known_items_only_drops_unknown_ids_and_repads():
    histories = np.array([[-1, 3, 9, 4], [-1, -1, 1, 2], [-1, -1, -1, 8]])
    assert known_items_only(histories, 5).tolist() == [[-1, -1, 3, 4], [-1, -1, 1, 2], [-1, -1, -1, -1]]


def rec_ids(c: TestClient, history: list[str], k: int = 10, **extra) -> list[str]:
    r = c.post("/recommend", json={"history": history, "k": k, **extra})
    assert r.status_code == 200, r.text
    return [it["id"] for it in r.json()["items"]]


def test_exclude_seen_never_returns_a_history_item_and_still_returns_k(run_dir):
    with client(run_dir) as c:
        ids = c.app.state.service.run.dataset.catalog.item_ids
        dropped = 0  # history items in the answers that keep them
        for start in range(0, 40, 4):
            history = ids[start:start + 3]
            history = history + rec_ids(c, history)[:4]  # items the model ranks high, now seen
            kept, excluded = rec_ids(c, history, exclude_seen=False), rec_ids(c, history, exclude_seen=True)
            assert len(excluded) == len(set(excluded)) == 10 and not set(excluded) & set(history)
            # the run's own answer (a beam widened to k + len(history): it may reorder the first items)
            run, catalog = c.app.state.service.run, c.app.state.service.run.dataset.catalog
            internal = [catalog.index_of(i) for i in history]
            assert excluded == [catalog.item_ids[i] for i in run.recommend(internal, 10, exclude_seen=True)]
            dropped += len(set(kept) & set(history))
            # no exclude_seen in the request: the run's serve.exclude_seen (configs/ml100k.yaml: true)
            default = excluded if run.cfg.serve.exclude_seen else kept
            assert rec_ids(c, history) == default == rec_ids(c, history, exclude_seen=None)
        assert dropped  # the default (keep) answers did hold history items
        long = ids[:60]  # more seen items than the beam is wide: the ranking goes deeper
        excluded = rec_ids(c, long, exclude_seen=True)
        assert len(excluded) == 10 and not set(excluded) & set(long)


def test_exclude_seen_in_search_and_in_the_cli(trained, tmp_path):
    with client(shutil.copytree(trained["search"], tmp_path / "search")) as c:
        history = c.app.state.service.run.dataset.catalog.item_ids[:30]
        r = c.post("/search", json={"query": "comedy", "history": history, "k": 10, "exclude_seen": True})
        assert r.status_code == 200, r.text
        found = [it["id"] for it in r.json()["items"]]
        assert len(found) == 10 and not set(found) & set(history)
    run_dir = shutil.copytree(trained["two_stage"], tmp_path / "rec")
    history = load_run(run_dir).dataset.catalog.item_ids[:25]
    default = load_run(run_dir).cfg.serve.exclude_seen  # the run's serve.exclude_seen (configs/ml100k.yaml: true)
    for flag, excluded in (("--exclude-seen", True), ("--keep-seen", False), (None, default)):
        args = ["recommend", str(run_dir), "--history", ",".join(history), "--k", "10"] + ([flag] if flag else [])
        result = CliRunner().invoke(cli_app, args)
        assert result.exit_code == 0, result.output
        answer = re.findall(r"^\s*\d+\. \[(.+?)\]", result.output, re.M)
        assert len(answer) == 10, result.output
        if excluded:
            assert not set(answer) & set(history)
        else:
            assert set(answer) & set(history)  # the model does recommend seen items: the flag matters


def test_items_added_over_http_are_known_to_the_cli_and_to_load_run_with_added_items(run_dir):
    with client(run_dir) as c:
        r = c.post("/items", json={"items": [{"id": "persist-1", "fields": NEW}]})
        assert r.status_code == 201, r.text
        sid = r.json()["items"][0]["sid"]
        history = [c.app.state.service.run.dataset.catalog.item_ids[0], "persist-1"]
        served = rec_ids(c, history)
        # while the server runs (its store open), and after
        result = CliRunner().invoke(cli_app, ["recommend", str(run_dir), "--history", ",".join(history), "--k", "10"])
        assert result.exit_code == 0, result.output
        assert re.findall(r"^\s*\d+\. \[(.+?)\]", result.output, re.M) == served
    run = load_run_with_added_items(run_dir)
    catalog = run.dataset.catalog
    assert "persist-1" in catalog and run.index.codes[catalog.index_of("persist-1")].tolist() == sid
    internal = [catalog.index_of(i) for i in history]  # served answers follow the run's serve.exclude_seen
    assert [catalog.item_ids[i] for i in run.recommend(internal, 10, run.exclude_seen_default)] == served
    assert "persist-1" not in load_run(run_dir).dataset.catalog  # evaluation keeps the trained catalog


def test_writes_need_the_token_and_reads_only_with_token_reads(run_dir):
    item = {"items": [{"id": "new-1", "fields": NEW}]}
    with client(run_dir, token="s3cret") as c:
        history = c.app.state.service.run.dataset.catalog.item_ids[:2]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            r = c.post("/items", json=item, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (headers, r.text)
        assert c.get("/health").json()["added_items"] == 0
        assert c.post("/recommend", json={"history": history}).status_code == 200
        assert c.get("/metrics").status_code == 200
        assert c.post("/items", json=item, headers={"Authorization": "Bearer s3cret"}).status_code == 201
    with client(run_dir, token="s3cret", token_reads=True) as c:
        auth = {"Authorization": "Bearer s3cret"}
        for method, path, body in (("post", "/recommend", {"history": history}), ("get", "/items/new-1", None),
                                   ("get", "/metrics", None)):
            assert c.request(method, path, json=body).status_code == 401, path
            assert c.request(method, path, json=body, headers=auth).status_code == 200, path
        assert c.get("/health").status_code == 200  # liveness stays open


def test_a_server_beyond_loopback_needs_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    check_exposure("127.0.0.1", None, False)
    check_exposure("0.0.0.0", "t", True)
    with pytest.raises(InputError, match="beyond loopback"):
        check_exposure("0.0.0.0", None, False)
    with pytest.raises(InputError, match="token-reads needs a token"):
        check_exposure("127.0.0.1", None, True)


def test_gensid_serve_refuses_a_public_host_without_a_token_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GENSID_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "gensid.cli", "serve", str(tmp_path), "--host", "0.0.0.0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "beyond loopback" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_gensid_serve_runs_the_model_on_its_threads_not_the_runs_training_threads(run_dir, monkeypatch):
    # the run was trained with train.threads=1; loading it for serving must not take that over --threads
    import uvicorn

    served = {}

    def start(app, **options):  # what uvicorn.run would do first: the app's startup (loading the run)
        with TestClient(app) as c:
            served["threads"] = torch.get_num_threads()
            served["status"] = c.post("/recommend", json={"history": ["1", "2"]}).status_code
        served["options"] = options

    before = torch.get_num_threads()
    monkeypatch.setattr(uvicorn, "run", start)
    try:
        result = CliRunner().invoke(cli_app, ["serve", str(run_dir), "--threads", "2"])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert load_config(run_dir / "config.yaml").train.threads == 1
    assert served["threads"] == 2 and served["status"] == 200
    assert served["options"]["access_log"] is False  # no log line per request


def test_startup_freezes_what_it_loaded_so_full_collections_do_not_pause_requests(run_dir):
    gc.unfreeze()
    try:
        with client(run_dir) as c:
            assert gc.get_freeze_count() > 10_000  # the run, the models: never garbage, never scanned again
            assert c.post("/recommend", json={"history": ["1", "2"]}).status_code == 200
    finally:
        gc.unfreeze()


def test_a_full_queue_answers_503_with_retry_after_at_once(run_dir):
    with client(run_dir, max_batch=1, max_queue=2) as c:
        batcher = c.app.state.batcher
        release, model = threading.Event(), batcher.fn
        batcher.fn = lambda asks: (release.wait(30), model(asks))[1]
        history = c.app.state.service.run.dataset.catalog.item_ids[:2]
        with ThreadPoolExecutor(3) as pool:
            waiting = [pool.submit(c.post, "/recommend", json={"history": history}) for _ in range(3)]
            deadline = time.monotonic() + 30
            while not (batcher.running and batcher.depth == 2) and time.monotonic() < deadline:
                time.sleep(0.01)
            start = time.perf_counter()
            r = c.post("/recommend", json={"history": history})
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert time.perf_counter() - start < 5
            # refused before the body is read or parsed (no 422 for a body that is not JSON)
            assert c.post("/recommend", content=b"not json").status_code == 503
            metrics = c.get("/metrics").text
            assert "gensid_queue_depth 2.0" in metrics
            release.set()
            assert [f.result().status_code for f in waiting] == [200] * 3


def test_stopping_the_batcher_answers_every_queued_request_and_refuses_new_ones():
    def slow(items):
        time.sleep(0.02)
        return [i * 2 for i in items]

    async def scenario():
        batcher = MicroBatcher(slow, max_batch=2, max_wait_ms=1, max_queue=100)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit(i)) for i in range(9)]
        await asyncio.sleep(0)  # all nine queued
        await batcher.stop()
        with pytest.raises(Overloaded):
            await batcher.submit(1)
        return await asyncio.gather(*pending)

    assert asyncio.run(scenario()) == [i * 2 for i in range(9)]


def test_a_batch_takes_every_queued_request_at_once_even_when_the_loop_is_slow():
    # under load one turn of the event loop outlasts max_wait: the batch must not grow by one request per turn
    calls = []

    def model(items):
        calls.append(len(items))
        return items

    async def scenario():
        batcher = MicroBatcher(model, max_batch=8, max_wait_ms=0, max_queue=100)
        batcher.start()
        pending = [asyncio.create_task(batcher.submit(i)) for i in range(20)]
        await asyncio.sleep(0)  # all twenty queued before the batcher's first turn
        return await asyncio.gather(*pending)

    assert asyncio.run(scenario()) == list(range(20))
    assert calls == [8, 8, 4]


def test_large_bodies_get_413_before_parsing_and_errors_echo_little_input(run_dir):
    with client(run_dir, max_body_bytes=10_000) as c:
        big = {"items": [{"id": "x", "fields": {"movie_title": "A" * 20_000}}]}
        r = c.post("/items", json=big)
        assert r.status_code == 413 and "10000 bytes" in r.text
        chunks = (b'{"history": ["' + b"1" * 5_000 + b'", "' + b"2" * 6_000 + b'"]}' for _ in range(1))
        r = c.post("/recommend", content=chunks, headers={"content-type": "application/json"})  # chunked: no length
        assert r.status_code == 413
        assert c.post("/recommend", json={"history": ["1"]}).status_code == 200
    with client(run_dir, max_body_bytes=10 << 20) as c:
        for body, status in (({"history": ["9" * 5_000_000]}, 422), ({"history": ["no-such" * 25]}, 404),
                             ({"history": ["1"] * 100_000}, 422), ({"history": [[1] * 1000] * 1000}, 422),
                             ({"items": [{"id": "z" * 1_000_000, "fields": {"q" * 1_000_000: "A"}}]}, 422)):
            path = "/items" if "items" in body else "/recommend"
            r = c.post(path, json=body)
            assert r.status_code == status and len(r.text) < 1500, (status, r.status_code, len(r.text))
        r = c.get("/items/" + "y" * 5000)
        assert r.status_code == 404 and len(r.text) < 300


def test_metrics_count_requests_latency_batches_queue_and_added_items(run_dir):
    with client(run_dir) as c:
        history = c.app.state.service.run.dataset.catalog.item_ids[:2]
        for _ in range(3):
            rec_ids(c, history)
        c.post("/recommend", json={"history": ["no-such-item"]})
        c.get("/items/no-such-item")
        c.post("/items", json={"items": [{"id": "new-1", "fields": NEW}, {"id": "new-2", "fields": NEW}]})
        r = c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(r.text) for s in family.samples}
    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("gensid_requests_total", endpoint="/recommend", method="POST", status="200") == 3
    assert value("gensid_requests_total", endpoint="/recommend", method="POST", status="404") == 1
    assert value("gensid_requests_total", endpoint="/items/{item_id}", method="GET", status="404") == 1
    assert value("gensid_requests_total", endpoint="/items", method="POST", status="201") == 1
    assert value("gensid_request_duration_seconds_count", endpoint="/recommend") == 4
    assert value("gensid_request_duration_seconds_bucket", endpoint="/recommend", le="+Inf") == 4
    assert value("gensid_batch_size_count") == 3 and value("gensid_batch_size_sum") == 3
    assert value("gensid_queue_depth") == 0
    assert value("gensid_items_added_total") == 2 and value("gensid_added_items") == 2
    assert value("gensid_catalog_items") == c.app.state.service.trained_items + 2


def test_an_exact_copy_of_a_popular_item_is_recommended_beside_it_at_the_served_beam(run_dir):
    """Issue 32: copies added over HTTP never reached an answer. The copy's disambiguation code is one
    the model never learned for it; its leaf now scores as its nearest sibling's (the original)."""
    with client(run_dir) as c:
        svc = c.app.state.service
        run, catalog = svc.run, svc.run.dataset.catalog
        histories = [[int(i) for i in h if i >= 0] for h in load_run(run_dir).splits.test.histories]
        k = svc.beam_size  # the served beam, and k as large as it allows
        before = svc.recommend_batch(histories)
        popular = np.bincount(np.concatenate([r[:k] for r in before])).argmax()
        original = catalog.item_ids[popular]
        r = c.post("/items", json={"items": [{"id": "copy", "fields": dict(catalog.fields[popular])}]})
        assert r.status_code == 201, r.text
        assert r.json()["items"][0]["sid"][:-1] == run.index.codes[popular, :-1].tolist()
        holding = 0
        for history, old in zip(histories, before, strict=True):
            answer = rec_ids(c, [catalog.item_ids[i] for i in history], k, exclude_seen=False)
            # the trained items keep their scores: without the copy, the answer is the old one
            assert [i for i in answer if i != "copy"] == [catalog.item_ids[i] for i in old[:k]][:len(answer) - ("copy" in answer)]
            if original in answer[:-1]:  # the original, with room after it
                holding += 1
                assert answer[answer.index(original) + 1] == "copy", answer
        assert holding >= 5  # a popular item: in many answers


def test_an_item_added_to_a_parallel_run_gets_its_digits_and_is_scored_exactly_at_once(trained, tmp_path):
    """A parallel-SID run: the copy of an item gets the original's digits from the frozen product
    quantizer, so its exact score equals the original's and it is ranked right beside it."""
    run_dir = shutil.copytree(trained["parallel"], tmp_path / "run")
    with client(run_dir) as c:
        run, catalog = c.app.state.service.run, c.app.state.service.run.dataset.catalog
        history = catalog.item_ids[:3]
        k = c.app.state.service.beam_size
        answer = rec_ids(c, history, k, exclude_seen=False)
        original = answer[0]
        r = c.post("/items", json={"items": [{"id": "copy", "fields": dict(catalog.fields[catalog.index_of(original)])}]})
        assert r.status_code == 201, r.text
        assert r.json()["items"][0]["sid"] == run.items.codes[catalog.index_of(original)].tolist()
        after = rec_ids(c, history, k, exclude_seen=False)
        assert set(after[:2]) == {original, "copy"} and [i for i in after if i != "copy"] == answer[:k - 1]
        assert c.post("/recommend", json={"history": [*history, "copy"], "k": 5}).status_code == 200
    with client(run_dir) as c:  # replayed from the store after a restart
        assert set(rec_ids(c, history, k, exclude_seen=False)[:2]) == {original, "copy"}
