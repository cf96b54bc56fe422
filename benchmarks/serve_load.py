"""Bounded load test of ``gensid serve`` on loopback, with a crash and restart in the middle.

Starts a real uvicorn server (``gensid serve``) over a copy of a trained run, sends
``--requests`` requests at ``--concurrency`` (a mix of ``POST /recommend`` with random
histories of known and freshly added items, and ``POST /items`` adding one new item
each), SIGKILLs the server halfway, restarts it from the same run directory, sends the
second half, then checks that every acknowledged item is still there with the same SID.
Given a hybrid folder (``gensid hybrid``), it load-tests the hybrid and then its run alone with
the same request sequence, and reports the hybrid's throughput and latency against the run's.
Writes ``--out`` (default ``research/results/serve_load.json``; one entry per folder).

    python benchmarks/serve_load.py --run-dir runs/ml100k-small --requests 5000 --concurrency 32
    python benchmarks/serve_load.py --run-dir research/experiments/hybrid/runs/<hybrid> --requests 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.speed import machine  # noqa: E402
from gensid.io import write_json  # noqa: E402
from gensid.report.results import git_commit, update_entry  # noqa: E402

RESULTS = ROOT / "research" / "results"
WORDS = ["space", "river", "night", "city", "love", "war", "ghost", "detective", "island", "summer", "robot", "king"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(run_dir: Path, port: int, timeout: float = 120) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gensid.cli", "serve", str(run_dir), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"gensid serve exited with code {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gensid serve did not answer /health within {timeout} s")


class Load:
    """Shared state of the workers: counters, latencies and the acknowledged items."""

    def __init__(self, known: list[str], text_fields: list[str], items_share: float, seed: int):
        self.known, self.text_fields, self.items_share = known, text_fields, items_share
        self.rng = random.Random(seed)
        self.latencies_ms: dict[str, list[float]] = {"/recommend": [], "/items": []}
        self.status: dict[int, int] = {}
        self.transport_errors = 0
        self.acknowledged: dict[str, list[int]] = {}  # item id -> SID returned with 201
        self.sent = {"recommend": 0, "items": 0}

    def request(self) -> tuple[str, dict]:
        if self.rng.random() < self.items_share:
            self.sent["items"] += 1
            item_id = f"load-{len(self.known)}-{self.rng.getrandbits(40):x}"
            fields = {name: " ".join(self.rng.choices(WORDS, k=3)).title() for name in self.text_fields}
            return "/items", {"items": [{"id": item_id, "fields": fields}]}
        self.sent["recommend"] += 1
        history = self.rng.choices(self.known, k=self.rng.randint(1, 10))
        return "/recommend", {"history": history, "k": 10}

    async def worker(self, client: httpx.AsyncClient, budget: list[int]) -> None:
        while budget[0] > 0:
            budget[0] -= 1
            path, body = self.request()
            start = time.perf_counter()
            try:
                response = await client.post(path, json=body)
            except httpx.TransportError:
                self.transport_errors += 1
                continue
            self.latencies_ms[path].append((time.perf_counter() - start) * 1000)
            self.status[response.status_code] = self.status.get(response.status_code, 0) + 1
            if path == "/items" and response.status_code == 201:
                for item in response.json()["items"]:
                    self.acknowledged[item["id"]] = item["sid"]
                    self.known.append(item["id"])

    async def run(self, port: int, requests: int, concurrency: int) -> float:
        """Send ``requests`` requests; returns the wall seconds."""
        budget = [requests]
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as client:
            start = time.perf_counter()
            await asyncio.gather(*(self.worker(client, budget) for _ in range(concurrency)))
            return time.perf_counter() - start


def lost_items(port: int, acknowledged: dict[str, list[int]]) -> int:
    """Acknowledged items the restarted server does not return with the same SID."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        return sum(1 for item_id, sid in acknowledged.items()
                   if (r := client.get(f"/items/{item_id}")).status_code != 200 or r.json()["sid"] != sid)


def staged_copy(folder: Path, work: Path) -> Path:
    """Copy a run (or a hybrid and its run) into ``work``; the folder to serve. The copy's hybrid.json
    points at the copied run and at the original SASRec folder (read only)."""
    from gensid.fusion.hybrid import HYBRID_FILE, hybrid_run_dir

    run_dir = hybrid_run_dir(folder)
    if run_dir is None:
        return Path(shutil.copytree(folder, work / "run", ignore=shutil.ignore_patterns("catalog.sqlite*")))
    shutil.copytree(run_dir, work / "run", ignore=shutil.ignore_patterns("catalog.sqlite*"))
    hybrid = Path(shutil.copytree(folder, work / "hybrid"))
    spec = json.loads((hybrid / HYBRID_FILE).read_text())
    spec["run_dir"] = "../run"
    if spec["scorer"] == "sasrec":
        spec["scorer_source"] = str((folder / spec["scorer_source"]).resolve())
    write_json(hybrid / HYBRID_FILE, spec)
    return hybrid


def load_test(folder: Path, known: list[str], text_fields: list[str], args: argparse.Namespace) -> dict:
    """One load test of ``gensid serve`` on a copy of ``folder``, with a SIGKILL and restart halfway."""
    work = Path(tempfile.mkdtemp(prefix="gensid-load-"))
    served = staged_copy(folder, work)
    port = free_port()
    load = Load(list(known), text_fields, args.items_share, seed=0)
    server = start_server(served, port)
    try:
        first = asyncio.run(load.run(port, args.requests // 2, args.concurrency))
        server.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
        server.wait()
        start = time.perf_counter()
        server = start_server(served, port)
        restart_s = time.perf_counter() - start
        lost = lost_items(port, load.acknowledged)
        second = asyncio.run(load.run(port, args.requests - args.requests // 2, args.concurrency))
        lost_at_end = lost_items(port, load.acknowledged)
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work)
    latencies = np.asarray([ms for per_path in load.latencies_ms.values() for ms in per_path])
    by_endpoint = {path: {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
                   for path, ms in load.latencies_ms.items() if ms}
    return {
        "served": str(folder), "requests": args.requests, "concurrency": args.concurrency,
        "mix": {"recommend": load.sent["recommend"], "items": load.sent["items"]},
        "throughput_rps": len(latencies) / (first + second),
        "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
        "by_endpoint": by_endpoint,
        "errors_5xx": sum(n for code, n in load.status.items() if code >= 500),
        "errors_4xx": sum(n for code, n in load.status.items() if 400 <= code < 500),
        "transport_errors": load.transport_errors, "status_counts": {str(k): v for k, v in sorted(load.status.items())},
        "items_added": len(load.acknowledged), "lost_items": lost, "lost_items_at_end": lost_at_end,
        "restarted_mid_run": True, "restart_kind": "SIGKILL, then gensid serve on the same folder",
        "restart_seconds": restart_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="a trained run or a hybrid folder (copied, never modified)")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--items-share", type=float, default=0.1, help="share of POST /items requests")
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_load.json")
    args = parser.parse_args(argv)
    from gensid.bundle import load_servable
    from gensid.fusion.hybrid import hybrid_run_dir

    run_dir = hybrid_run_dir(args.run_dir) or args.run_dir
    run = load_servable(run_dir)
    if run.cfg.data.task != "rec":
        raise SystemExit(f"{run_dir}: a {run.cfg.data.task} run; this load test sends /recommend requests")
    known, text_fields = list(run.dataset.catalog.item_ids), list(run.cfg.data.text_fields)
    del run
    result = load_test(args.run_dir, known, text_fields, args)
    if run_dir != args.run_dir:  # a hybrid: its run alone, same requests, for the ratio
        alone = load_test(run_dir, known, text_fields, args)
        result = {"hybrid": result, "run_alone": alone,
                  "hybrid_over_run": {"throughput": result["throughput_rps"] / alone["throughput_rps"],
                                      "p50": result["p50_ms"] / alone["p50_ms"], "p99": result["p99_ms"] / alone["p99_ms"]}}
    result |= {"machine": machine(), "commit": git_commit(),
               "command": shlex.join([os.path.relpath(sys.executable), *sys.argv])}
    print(json.dumps(result, indent=2))
    update_entry(args.out, str(args.run_dir), result)


if __name__ == "__main__":
    main()
