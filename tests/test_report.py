"""gensid report: the numbers the page shows on hand-computed cases, and the page of small real
MovieLens runs, opened in headless Chromium (Debian's ``chromium``) over the DevTools protocol."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import faiss
import numpy as np
import pytest
import websocket
from typer.testing import CliRunner

from conftest import tiny_ml100k
from gensid.bundle import export_bundle
from gensid.cli import app
from gensid.config import load_config
from gensid.errors import InputError
from gensid.pipeline import load_run, train_run
from gensid.quantize.product import ProductQuantizer
from gensid.report.page_numbers import (
    collision_groups,
    digit_values,
    example_rows,
    hits_by_bucket,
    sid_tree,
    split_metrics,
    usage_rows,
)
from gensid.report.run_page import build_report
from gensid.side_by_side import sasrec_beside
from test_serve import JOINT, PARALLEL

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ---------------------------------------------------------------- the numbers, by hand


def test_usage_rows_count_used_and_dead_codes_and_the_perplexity():
    # level 1: codes 0, 0, 1, 2 of 4 -> p = (1/2, 1/4, 1/4), entropy 1.5 ln 2, perplexity 2^1.5
    # level 2: codes 0..3 once each -> perplexity 4, the whole codebook
    codes = np.array([[0, 0], [0, 1], [1, 2], [2, 3]])
    level1, level2 = usage_rows(codes, [4, 4])
    assert (level1["name"], level1["used"], level1["dead"]) == ("level 1", 3, 1)
    assert level1["perplexity"] == pytest.approx(2 ** 1.5)
    assert level1["share"] == pytest.approx(2 ** 1.5 / 4)
    assert (level2["used"], level2["dead"], level2["perplexity"], level2["share"]) == (4, 0, pytest.approx(4), 1)


def test_the_code_tree_counts_items_under_each_prefix_most_first():
    codes = np.array([[1, 0], [1, 0], [1, 2], [0, 5], [1, 3]])
    order = np.array([4, 3, 2, 1, 0])  # item 4 the most popular
    tree = sid_tree(codes, lambda i: f"item {i}", order, max_children=2, titles=1)
    assert [(n.path, n.count, n.titles) for n in tree] == [("1", 4, ["item 4"]), ("0", 1, ["item 3"])]
    # level 2 under code 1: 1-0 holds items 0 and 1, then 1-2 and 1-3 with one each; two are shown
    first = tree[0]
    assert [(n.path, n.count) for n in first.children] == [("1-0", 2), ("1-2", 1)] and first.hidden == 1
    assert first.children[0].titles == ["item 1", "item 0"]  # the last level lists 2 x titles, popular first
    assert first.children[0].children == []


def test_collision_groups_are_the_items_sharing_all_codes_largest_first():
    codes = np.array([[0, 1], [2, 2], [0, 1], [2, 2], [0, 1], [3, 3]])
    assert [g.tolist() for g in collision_groups(codes)] == [[0, 2, 4], [1, 3]]
    assert collision_groups(np.array([[0], [1]])) == []


def test_digit_values_list_the_most_used_values_and_their_nearest_items():
    codes = np.array([[5], [5], [7], [5]])
    distances = np.array([[0.3], [0.1], [0.0], [0.2]])
    (digit,) = digit_values(codes, distances, [0], values=1, nearest=2)
    assert digit["digit"] == 0
    (value,) = digit["values"]
    assert (value["value"], value["count"], value["nearest"].tolist()) == (5, 3, [1, 3])


def test_digit_distances_add_up_to_the_reconstruction_error(rng):
    # OPQ's rotation is orthogonal: the squared distances of the sub-vectors to their digits'
    # centroids sum to the distance of the vector to its decoded reconstruction
    vectors = rng.normal(size=(700, 16)).astype(np.float32)
    for opq in (False, True):
        quantizer = ProductQuantizer.fit(vectors, digits=4, codebook_size=16, opq=opq)
        distances = quantizer.digit_distances(vectors)
        decoded = quantizer.index.sa_decode(quantizer.index.sa_encode(vectors))
        assert distances.shape == (700, 4)
        np.testing.assert_allclose((distances ** 2).sum(1), ((vectors - decoded) ** 2).sum(1), rtol=1e-3, atol=1e-4)
    assert isinstance(quantizer.index, faiss.Index)


def test_hits_by_bucket_is_the_share_of_targets_ranked_in_the_top_k():
    ranks = {"run": np.array([0, 9, 10, -1, 3]), "other": np.array([-1, -1, 2, 2, 12])}
    bucket = np.array([0, 0, 0, 1, 1])
    rows = hits_by_bucket(ranks, bucket, k=10, buckets=3)
    assert rows[0] == {"bucket": 0, "users": 3, "run": pytest.approx(2 / 3), "other": pytest.approx(1 / 3)}
    assert rows[1] == {"bucket": 1, "users": 2, "run": 0.5, "other": 0.5}
    assert rows[2]["users"] == 0 and math.isnan(rows[2]["run"])


def test_example_rows_take_the_first_hits_then_the_first_misses():
    ranks = np.array([12, 0, -1, 3, 9, 10, 2])
    assert example_rows(ranks, hits=2, misses=2).tolist() == [0, 1, 2, 3]
    assert example_rows(ranks, hits=4, misses=1).tolist() == [0, 1, 3, 4, 6]


def test_split_metrics_read_a_run_or_a_sasrec_log(tmp_path):
    (tmp_path / "log.jsonl").write_text(json.dumps({"event": "start"}) + "\n"
                                        + json.dumps({"event": "eval", "split": "test", "metrics": {"recall@10": .5}}) + "\n")
    assert split_metrics(tmp_path) == {"test": {"recall@10": .5}}
    (tmp_path / "metrics.json").write_text(json.dumps({"valid": {"recall@10": .25}, "test": {"recall@10": .75},
                                                       "epochs": 3}))
    assert split_metrics(tmp_path) == {"valid": {"recall@10": .25}, "test": {"recall@10": .75}}


# ---------------------------------------------------------------- the page of real runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny MovieLens runs of the demo config (seconds each): two-stage with a SASRec beside it,
    joint and parallel."""
    out = {}
    for name, extra in (("two_stage", []), ("joint", JOINT), ("parallel", PARALLEL)):
        run_dir = tmp_path_factory.mktemp(name)
        train_run(load_config("configs/ml100k.yaml", tiny_ml100k(2) + extra), run_dir, progress=False)
        out[name] = run_dir
    sasrec_beside(load_run(out["two_stage"]), minutes=0.05, progress=False)
    return out


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_page_holds_every_section_and_nothing_from_outside(runs):
    html = build_report(runs["two_stage"], against=runs["two_stage"] / "sasrec")
    text = text_of(html)
    for heading in ("Metrics", "Training", "Config", "Code usage", "Collisions", "Code tree", "Example users"):
        assert heading in text
    metrics = json.loads((runs["two_stage"] / "metrics.json").read_text())
    assert f"{metrics['test']['recall@10']:.4f}" in text and f"{metrics['most_popular']['test']['ndcg@10']:.4f}" in text
    assert "against: sasrec" in text and "this run hit@10" in text
    assert html.count("data:image/png;base64,") >= 4  # loss, validation, code usage, popularity
    assert not re.search(r"""(src|href)=["'](?!data:|#)""", html)  # no file or network reference
    # three users whose target is in their top 10 and three whose is not (as many as there are)
    ranks = np.asarray(json.loads((runs["two_stage"] / "test_ranks.json").read_text())["ranks"])
    hits = int(((ranks >= 0) & (ranks < 10)).sum())
    assert text.count("held-out next item") == min(3, hits) + min(3, len(ranks) - hits)
    assert text.count("✓ the held-out item") == min(3, hits)


def test_joint_and_parallel_pages_show_their_own_sections(runs):
    joint = text_of(build_report(runs["joint"]))
    assert "Drift" in joint and "end with another SID" in joint
    parallel = build_report(runs["parallel"])
    assert "Digits" in text_of(parallel) and "Code tree" not in text_of(parallel)
    assert parallel.count('<details class="node"') >= 3 * 2  # three digits, each with its values
    assert "give --against SASREC_RUN_DIR" in text_of(parallel)


def test_a_bundle_or_a_run_without_weights_says_what_it_cannot_show(runs, tmp_path):
    bundle = tmp_path / "bundle"
    export_bundle(runs["two_stage"], bundle)
    text = text_of(build_report(bundle, against=runs["two_stage"] / "sasrec"))
    assert "a bundle holds no interactions: example users need" in text
    assert "a bundle holds no interactions: the popularity buckets need" in text
    assert "Code tree" in text and "recall@10" in text
    unweighted = tmp_path / "run"
    shutil.copytree(runs["joint"], unweighted)
    (unweighted / "model.safetensors").unlink()
    text = text_of(build_report(unweighted))
    assert "no model.safetensors: example users need the trained weights" in text
    assert "the codes shown are the initial ones" in text


def test_gensid_report_writes_the_page_and_refuses_bad_folders_in_one_line(runs, tmp_path):
    out = tmp_path / "page.html"
    result = runner.invoke(app, ["report", str(runs["parallel"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    other = tmp_path / "sasrec-of-other-data"  # a SASRec ranked on other test users
    shutil.copytree(runs["two_stage"] / "sasrec", other)
    ranks = json.loads((other / "test_ranks.json").read_text())
    (other / "test_ranks.json").write_text(json.dumps({**ranks, "test_users": "another split"}))
    for args, says in ((["report", str(tmp_path / "nothing")], "not a run folder or bundle (no config.yaml)"),
                       (["report", str(runs["parallel"]), "--against", str(tmp_path)], "no test_ranks.json there"),
                       (["report", str(runs["parallel"]), "--against", str(other)], "ranked on other test users"),
                       (["report", str(runs["parallel"]), "--out", str(tmp_path)], "a folder; give the HTML file")):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, InputError), result.output
        assert says in str(result.exception) and "\n" not in str(result.exception)


# ---------------------------------------------------------------- in a real browser


class Chromium:
    """Headless Chromium driven over the DevTools protocol (a websocket on the loopback): open a
    page, collect its console errors and requests, evaluate JavaScript, take a screenshot."""

    def __init__(self, profile: Path):
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--window-size=1280,1000", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.calls, self.events = 0, []

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.socket.recv()))

    def open(self, url: str) -> None:
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error calls and error log entries (failed loads included)."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(json.dumps(params["exceptionDetails"])[:300])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                out.append(json.dumps(params["args"])[:300])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                out.append(params["entry"]["text"])
        return out

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> None:
        """The whole page, not only the window, as a PNG."""
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        if getattr(self, "socket", None) is not None:
            self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium; "
                                             ".ci/run installs it)")
def test_the_page_loads_in_chromium_without_errors_and_its_tree_opens(runs, tmp_path):
    page = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(runs["two_stage"]), "--out", str(page),
                                 "--against", str(runs["two_stage"] / "sasrec")])
    assert result.exit_code == 0, result.output
    browser = Chromium(tmp_path / "profile")
    try:
        browser.open(page.as_uri())
        assert browser.errors() == []
        assert [url for url in browser.requests() if not url.startswith(("file:", "data:"))] == []
        # the metrics table, with this run's test row
        rows = browser.evaluate("Array.from(document.querySelectorAll('#metrics-table tbody tr'))"
                                ".map(r => r.cells[0].textContent + '|' + r.cells[1].textContent)")
        assert "two_stage (this run)|test" in rows and "most popular|test" in rows
        assert browser.evaluate("document.images.length") >= 4
        assert browser.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        # a level-1 node of the tree: closed, its children hidden; a click on its summary opens it
        node = "document.querySelector('#sid-tree > details')"
        assert browser.evaluate(f"{node}.open") is False
        assert browser.evaluate(f"{node}.querySelector('details').checkVisibility()") is False
        browser.evaluate(f"{node}.querySelector('summary').click()")
        assert browser.evaluate(f"{node}.open") is True
        assert browser.evaluate(f"{node}.querySelector('details').checkVisibility()") is True
        # "expand all" opens every node down to the item lists
        browser.evaluate("document.getElementById('expand-all').click()")
        assert browser.evaluate("Array.from(document.querySelectorAll('#sid-tree details')).every(d => d.open)")
        assert browser.evaluate("document.querySelector('#sid-tree ul.leaf li').checkVisibility()") is True
        browser.screenshot(tmp_path / "report.png")
        assert browser.errors() == []
    finally:
        browser.close()
    shot = (tmp_path / "report.png").read_bytes()
    assert shot.startswith(b"\x89PNG") and len(shot) > 50_000
