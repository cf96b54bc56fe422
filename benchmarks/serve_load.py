"""Load test of ``gensid serve`` on loopback: steady load, a SIGKILL and restart mid-run, 4x overload.

Starts a real ``gensid serve`` (uvicorn) over a copy of a trained run or bundle and, in one run:

1. **client alone**: the load generator against a trivial HTTP server (a fixed JSON answer), to show
   it is not what limits the service (it shares the machine's cores with the server);
2. **steady**: ``--requests`` requests at ``--concurrency``: ``POST /recommend`` with 1-10 random
   history items (freshly added ones included) and, a ``--items-share`` of them, ``POST /items``
   adding one new item each; ``/recommend`` throughput, p50 and p99;
3. **crash**: the same mix, the server SIGKILLed while requests are in flight once half of
   ``--crash-requests`` are answered, restarted from the same folder (the workers reconnect); every
   item acknowledged with a 201 must be there with the same SID after the restart;
4. **overload**: ``--overload-requests`` ``POST /recommend`` at ``--overload-factor`` times the
   concurrency against the server's small ``--max-queue``: rejected requests get 503 with
   ``Retry-After`` at once (the worker sends its next request at once too, ignoring it), and the
   p50 / p99 of the admitted requests are reported.

Then every acknowledged item is checked once more. Latencies are client-side (request written to
answer read). ``os.getloadavg()`` before and after, and the CPU seconds the server and the client
used per request, say how busy the machine was. The client is a lean asyncio HTTP/1.1 client (one
keep-alive connection per worker, on uvloop): httpx drives about 200 req/s from one core here, less
than the service answers. Given a hybrid folder (``gensid hybrid``), it load-tests the hybrid and
then its run alone and reports the ratios. Writes ``--out`` (default
``research/results/serve_load.json``; one entry per folder).

    gensid export RUN_DIR /tmp/bundle
    python benchmarks/serve_load.py --run-dir /tmp/bundle
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.speed import machine  # noqa: E402
from gensid.io import write_json  # noqa: E402
from gensid.report.results import git_commit, update_entry  # noqa: E402

RESULTS = ROOT / "research" / "results"
WORDS = ["space", "river", "night", "city", "love", "war", "ghost", "detective", "island", "summer", "robot", "king"]
TRIVIAL_ANSWER = b'{"items":[]}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_loop(coroutine):
    """Run ``coroutine`` on uvloop when installed (as uvicorn does), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1: a request, then its answer, in turn. Just what a
    load generator needs (answers carry ``Content-Length``, as uvicorn's do)."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body); ``OSError`` / ``asyncio.IncompleteReadError`` when the
        connection breaks (the connection is then reopened on the next request)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode() if body is not None else b""
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {name.strip().lower(): value.strip()
                       for name, _, value in (line.partition(":") for line in lines if line)}
            answer = await self.reader.readexactly(int(headers.get("content-length", 0)))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            raise
        if headers.get("connection") == "close":
            self.close()
        return int(status_line.split()[1]), headers, answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def trivial_server(port: int) -> None:
    """An HTTP/1.1 server that answers every request with the same small JSON (the client-alone check)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        response = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(TRIVIAL_ANSWER)}"
                    "\r\n\r\n").encode() + TRIVIAL_ANSWER
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(response)
        except (OSError, asyncio.IncompleteReadError):
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(answer, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    run_loop(serve())


def wait_for_health(port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server on port {port} exited")
        time.sleep(0.2)
    raise RuntimeError(f"nothing answered /health on port {port} within {timeout} s")


def start_server(folder: Path, port: int, args: argparse.Namespace, timeout: float = 180) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "gensid.cli", "serve", str(folder), "--port", str(port),
               "--threads", str(args.threads), "--max-queue", str(args.max_queue)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_health(port, timeout, proc)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"p50_ms": float("nan"), "p99_ms": float("nan")}
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


class Load:
    """The request mix and what came back: latencies and status codes per endpoint, the items
    acknowledged with their SIDs (kept across phases: later phases recommend them too)."""

    def __init__(self, known: list[str], text_fields: list[str], items_share: float, seed: int):
        self.known, self.text_fields, self.items_share = known, text_fields, items_share
        self.rng = random.Random(seed)
        self.acknowledged: dict[str, list[int]] = {}  # item id -> SID returned with 201
        self.reset()

    def reset(self) -> None:
        """Start a phase: empty latencies and counts (the acknowledged items stay)."""
        self.latencies_ms: dict[str, list[float]] = {"/recommend": [], "/items": []}
        self.status: dict[int, int] = {}
        self.rejected_without_retry_after = 0
        self.transport_errors = 0
        self.answered = 0

    def request(self) -> tuple[str, dict]:
        if self.rng.random() < self.items_share:
            item_id = f"load-{len(self.known)}-{self.rng.getrandbits(40):x}"
            fields = {name: " ".join(self.rng.choices(WORDS, k=3)).title() for name in self.text_fields}
            return "/items", {"items": [{"id": item_id, "fields": fields}]}
        return "/recommend", {"history": self.rng.choices(self.known, k=self.rng.randint(1, 10)), "k": 10}

    def record(self, path: str, status: int, headers: dict[str, str], body: bytes, ms: float) -> None:
        self.answered += 1
        self.status[status] = self.status.get(status, 0) + 1
        if status == 503:
            self.rejected_without_retry_after += "retry-after" not in headers
            return
        self.latencies_ms[path].append(ms)
        if path == "/items" and status == 201:
            for item in json.loads(body)["items"]:
                self.acknowledged[item["id"]] = item["sid"]
                self.known.append(item["id"])

    def summary(self, seconds: float) -> dict:
        recommend = self.latencies_ms["/recommend"]
        return {
            "seconds": seconds, "answered": self.answered,
            "recommend_rps": len(recommend) / seconds, "admitted_rps": sum(map(len, self.latencies_ms.values())) / seconds,
            "recommend": {"answered": len(recommend), **percentiles(recommend)},
            "items": {"answered": len(self.latencies_ms["/items"]), **percentiles(self.latencies_ms["/items"])},
            "status_counts": {str(k): v for k, v in sorted(self.status.items())},
            "rejected_503": self.status.get(503, 0), "rejected_without_retry_after": self.rejected_without_retry_after,
            "errors_5xx": sum(n for code, n in self.status.items() if code >= 500 and code != 503),
            "errors_4xx": sum(n for code, n in self.status.items() if 400 <= code < 500),
            "transport_errors": self.transport_errors,
        }


async def drive(port: int, load: Load, requests: int, concurrency: int,
                midway: asyncio.Event | None = None, reconnect_s: float = 0.0) -> float:
    """Send ``requests`` requests from ``concurrency`` workers (closed loop: each sends its next
    request when its answer is in); returns the wall seconds. ``midway`` is set once half are
    answered. A broken connection counts as a transport error; with ``reconnect_s`` the worker retries
    the connection for that long (a server restarting), else the error is only counted."""
    budget = [requests]

    async def worker() -> None:
        connection = Connection(port)
        while budget[0] > 0:
            budget[0] -= 1
            path, body = load.request()
            start = time.perf_counter()
            try:
                status, headers, answer = await connection.request("POST", path, body)
            except (OSError, asyncio.IncompleteReadError):
                load.transport_errors += 1
                if reconnect_s:
                    await wait_for_port(port, reconnect_s)
                continue
            load.record(path, status, headers, answer, (time.perf_counter() - start) * 1000)
            if midway is not None and load.answered >= requests // 2:
                midway.set()
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


async def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.2)


async def lost_items(port: int, acknowledged: dict[str, list[int]]) -> int:
    """Acknowledged items the server does not return with the same SID."""
    connection, lost = Connection(port), 0
    for item_id, sid in list(acknowledged.items()):  # a copy: workers may be adding items meanwhile
        status, _, body = await connection.request("GET", f"/items/{item_id}")
        lost += status != 200 or json.loads(body)["sid"] != sid
    connection.close()
    return lost


def client_alone(requests: int, concurrency: int) -> dict:
    """The load generator against :func:`trivial_server`: what it drives when the server costs nothing."""
    port = free_port()
    server = get_context("spawn").Process(target=trivial_server, args=(port,), daemon=True)  # no fork of torch
    server.start()
    try:
        run_loop(wait_for_port(port, 30))
        load = Load(["x"], [], 0.0, seed=0)
        cpu = own_cpu_seconds()
        seconds = run_loop(drive(port, load, requests, concurrency))
        cpu = own_cpu_seconds() - cpu
    finally:
        server.kill()
        server.join()
    return {"requests": requests, "concurrency": concurrency, "rps": requests / seconds,
            "client_cpu_ms_per_request": 1000 * cpu / requests, **percentiles(load.latencies_ms["/recommend"])}


def staged_copy(folder: Path, work: Path) -> Path:
    """Copy a run or bundle (or a hybrid and its run) into ``work``; the folder to serve. The copy's
    hybrid.json points at the copied run and at the original SASRec folder (read only)."""
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


def served_method(run_dir: Path) -> dict:
    """What the folder serves: its method and the settings that name it."""
    from gensid.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    parallel = cfg.method.family == "parallel"
    method = {"run": cfg.name, "method": cfg.method.name, "seed": cfg.train.seed,
              "items_ranked_by": "exact scores of every catalog item" if parallel
              else f"constrained beam search, beam {cfg.eval.beam_size}",
              "model": {"d_model": cfg.model.d_model, "layers": cfg.model.encoder_layers}}
    if parallel:
        p = cfg.parallel
        method["parallel"] = {"digits": p.digits, "codebook_size": p.codebook_size, "head": p.head,
                              "item_ids": p.item_ids}
    return method


def load_test(folder: Path, known: list[str], text_fields: list[str], args: argparse.Namespace) -> dict:
    """The three phases against ``gensid serve`` on a copy of ``folder``."""
    work = Path(tempfile.mkdtemp(prefix="gensid-load-"))
    served = staged_copy(folder, work)
    port = free_port()
    load = Load(list(known), text_fields, args.items_share, seed=0)
    server = start_server(served, port, args)
    try:
        run_loop(drive(port, load, args.warmup, args.concurrency))  # first calls: allocations, caches
        load.reset()
        cpu = cpu_seconds(server.pid), own_cpu_seconds()
        seconds = run_loop(drive(port, load, args.requests, args.concurrency))
        steady = load.summary(seconds) | {
            "concurrency": args.concurrency, "requests": args.requests,
            "server_cpu_ms_per_request": 1000 * (cpu_seconds(server.pid) - cpu[0]) / load.answered,
            "client_cpu_ms_per_request": 1000 * (own_cpu_seconds() - cpu[1]) / load.answered}

        load.reset()
        server, crash = crash_and_restart(server, served, port, load, args)

        load.reset()
        # /recommend only: a refused request comes back at once and its worker sends the next, so a share
        # of writes would add items many times faster than the steady phase does (writes are never shed)
        load.items_share, concurrency = 0.0, args.overload_factor * args.concurrency
        seconds = run_loop(drive(port, load, args.overload_requests, concurrency))
        load.items_share = args.items_share
        overload = load.summary(seconds) | {"concurrency": concurrency, "requests": args.overload_requests}
        lost_at_end = run_loop(lost_items(port, load.acknowledged))
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work)
    return {"served": str(folder), "steady": steady, "crash": crash, "overload": overload,
            "items_acknowledged": len(load.acknowledged), "lost_items_at_end": lost_at_end}


def crash_and_restart(server: subprocess.Popen, served: Path, port: int, load: Load, args: argparse.Namespace
                      ) -> tuple[subprocess.Popen, dict]:
    """Load at ``--concurrency``; SIGKILL the server with requests in flight once half of
    ``--crash-requests`` are answered; restart it while the workers retry; count the acknowledged
    items the restarted server lost. Returns the new server and the phase's record."""
    acknowledged_before = len(load.acknowledged)
    record: dict = {}

    async def phase() -> None:
        midway = asyncio.Event()
        workers = asyncio.create_task(drive(port, load, args.crash_requests, args.concurrency, midway, 180))
        await midway.wait()
        server.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown: in-flight requests break
        await asyncio.to_thread(server.wait)
        record["killed_after_answers"] = load.answered
        start = time.perf_counter()
        record["server"] = await asyncio.to_thread(start_server, served, port, args)
        record["restart_seconds"] = time.perf_counter() - start
        record["lost_items_after_restart"] = await lost_items(port, load.acknowledged)
        await workers

    run_loop(phase())
    restarted = record.pop("server")
    return restarted, {"requests": args.crash_requests, **record,
                       "items_acknowledged": len(load.acknowledged) - acknowledged_before,
                       "items_acknowledged_in_all": len(load.acknowledged),
                       "transport_errors": load.transport_errors,
                       "status_counts": {str(k): v for k, v in sorted(load.status.items())},
                       "kind": "SIGKILL with requests in flight, then gensid serve on the same folder"}


def targets(result: dict) -> dict:
    """The issue's bar, checked on this run."""
    steady, overload = result["steady"], result["overload"]
    return {
        "steady_recommend_rps_at_least_500": steady["recommend_rps"] >= 500,
        "steady_recommend_p99_at_most_100_ms": steady["recommend"]["p99_ms"] <= 100,
        "steady_no_5xx": steady["errors_5xx"] == 0 and steady["rejected_503"] == 0,
        "overload_sheds_with_503_and_retry_after": overload["rejected_503"] > 0
        and overload["rejected_without_retry_after"] == 0 and overload["errors_5xx"] == 0,
        "overload_admitted_p99_at_most_250_ms": overload["recommend"]["p99_ms"] <= 250,
        "no_acknowledged_item_lost": result["crash"]["lost_items_after_restart"] == 0
        and result["lost_items_at_end"] == 0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="a trained run, a bundle (gensid export) or a hybrid folder (copied, never modified)")
    parser.add_argument("--requests", type=int, default=10_000, help="requests of the steady phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--items-share", type=float, default=0.01, help="share of POST /items requests")
    parser.add_argument("--crash-requests", type=int, default=3000, help="requests of the crash phase")
    parser.add_argument("--overload-requests", type=int, default=20_000)
    parser.add_argument("--overload-factor", type=int, default=4, help="overload concurrency / --concurrency")
    parser.add_argument("--max-queue", type=int, default=32, help="gensid serve --max-queue (503 past it)")
    parser.add_argument("--threads", type=int, default=1, help="gensid serve --threads")
    parser.add_argument("--warmup", type=int, default=500, help="requests before the steady phase, not recorded")
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
    load_before = os.getloadavg()
    alone = client_alone(args.requests, args.concurrency)
    result = load_test(args.run_dir, known, text_fields, args)
    result["targets"] = targets(result)
    if run_dir != args.run_dir:  # a hybrid: its run alone, same requests, for the ratio
        solo = load_test(run_dir, known, text_fields, args)
        result = {"hybrid": result, "run_alone": solo, "hybrid_over_run": {
            "recommend_rps": result["steady"]["recommend_rps"] / solo["steady"]["recommend_rps"],
            "p50": result["steady"]["recommend"]["p50_ms"] / solo["steady"]["recommend"]["p50_ms"],
            "p99": result["steady"]["recommend"]["p99_ms"] / solo["steady"]["recommend"]["p99_ms"]}}
    result |= {"method": served_method(run_dir), "client_alone": alone,
               "client": "asyncio HTTP/1.1, one keep-alive connection per worker, uvloop (benchmarks/serve_load.py)",
               "server": {"threads": args.threads, "max_queue": args.max_queue},
               "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg()),
               "niceness": os.nice(0), "machine": machine(), "commit": git_commit(),
               "command": shlex.join([os.path.relpath(sys.executable), *sys.argv])}
    print(json.dumps(result, indent=2))
    update_entry(args.out, str(args.run_dir), result)


if __name__ == "__main__":
    main()
