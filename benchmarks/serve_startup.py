"""Startup time and peak memory of ``gensid serve`` and ``gensid recommend``: from a bundle
(``gensid export``) against from the run folder it was exported from.

Exports ``--run-dir`` into a temporary bundle, then alternates the two folders ``--repeats``
times (after one unmeasured warm-up of each): ``gensid serve`` (``--threads 1``) is timed from
the spawn to its first ``200`` from ``GET /health`` and then stopped with SIGTERM;
``gensid recommend`` (one history of 3 items) is timed to its exit. Peak memory is each
process's maximum resident set size (``wait4``). ``load`` is the loading alone, timed inside a
process that has imported gensid (as the service loads the folder; for the run folder also
with its data split, ``load_with_splits``, as the service loaded it before bundles). Every
process gets ``OMP_NUM_THREADS=1``. ``gensid serve`` also loads the sentence encoder at
startup, from either folder. Writes ``--out`` (default
``research/results/serve_startup.json``; one entry per ``--label``).

    python benchmarks/serve_startup.py --run-dir runs/ml100k-tiny --label ml100k-tiny
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from benchmarks.serve_load import free_port  # noqa: E402
from benchmarks.speed import machine  # noqa: E402
from gensid.report.results import git_commit, update_entry  # noqa: E402

RESULTS = ROOT / "research" / "results"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def reap(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for ``proc``: (exit status, peak resident memory in MiB)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024  # Linux: KiB


def serve_once(folder: Path, timeout: float = 300) -> dict:
    """Seconds from spawning ``gensid serve FOLDER`` to its first healthy answer, and its peak memory."""
    port = free_port()
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:  # uvicorn's log: a pipe nobody reads could fill and stall it
        proc = subprocess.Popen([sys.executable, "-m", "gensid.cli", "serve", str(folder), "--port", str(port)],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=log)
        ready = None
        while time.perf_counter() - start < timeout and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    ready = time.perf_counter() - start
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        if ready is None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            raise RuntimeError(f"gensid serve {folder} did not become healthy: {log.read().decode()[-500:]}")
        proc.send_signal(signal.SIGTERM)
        _, peak = reap(proc)
    return {"startup_s": ready, "peak_rss_mib": peak}


def recommend_once(folder: Path, history: list[str]) -> dict:
    """Seconds and peak memory of ``gensid recommend FOLDER --history ...``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "gensid.cli", "recommend", str(folder), "--history",
                             ",".join(history), "--k", "5"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    code, peak = reap(proc)
    if code != 0:
        raise RuntimeError(f"gensid recommend {folder} exited with {code}: {proc.stderr.read().decode()[-500:]}")
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": peak}


LOAD = """import sys, time
from gensid.live import load_run_with_added_items
from gensid.pipeline import load_run
start = time.perf_counter()
load_run(sys.argv[1]) if sys.argv[2] == "splits" else load_run_with_added_items(sys.argv[1])
print(time.perf_counter() - start)
"""


def load_once(folder: Path, splits: bool = False) -> dict:
    """Seconds to load ``folder`` in a process that has imported gensid already: as the service loads
    it, or (``splits``) with its data split, as the service loaded a run folder before bundles."""
    proc = subprocess.run([sys.executable, "-c", LOAD, str(folder), "splits" if splits else "serve"], env=ENV,
                          capture_output=True, text=True, check=True)
    return {"seconds": float(proc.stdout.strip().splitlines()[-1])}


def summary(samples: list[dict]) -> dict:
    return {key: {"median": statistics.median(s[key] for s in samples), "all": [round(s[key], 3) for s in samples]}
            for key in samples[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="a trained run folder (read, never modified)")
    parser.add_argument("--label", default=None, help="the entry's key in --out (default: the folder's name)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_startup.json")
    args = parser.parse_args(argv)
    from gensid.bundle import export_bundle

    with tempfile.TemporaryDirectory() as work:
        bundle = Path(work) / "bundle"
        manifest = export_bundle(args.run_dir, bundle)
        history = [json.loads(line)["id"] for line in (bundle / "items.jsonl").read_text().splitlines()[:3]]
        folders = {"run_folder": args.run_dir, "bundle": bundle}
        measured: dict[str, dict[str, list[dict]]] = {name: {"serve": [], "recommend": [], "load": []}
                                                      for name in folders}
        measured["run_folder"]["load_with_splits"] = []
        for repeat in range(args.repeats + 1):  # the first round warms the page cache, unmeasured
            for name, folder in folders.items():
                got = {"serve": serve_once(folder), "recommend": recommend_once(folder, history),
                       "load": load_once(folder)}
                if name == "run_folder":
                    got["load_with_splits"] = load_once(folder, splits=True)
                for command, sample in got.items():
                    if repeat:
                        measured[name][command].append(sample)
        size = sum(manifest["files"].values())
    result = {name: {command: summary(samples) for command, samples in by_command.items()}
              for name, by_command in measured.items()}
    result |= {"strategy": manifest["strategy"], "dataset": manifest["dataset"], "items": manifest["items"],
               "bundle_mib": size / 2**20, "repeats": args.repeats, "machine": machine(), "commit": git_commit(),
               "command": shlex.join([os.path.relpath(sys.executable), *sys.argv])}
    print(json.dumps(result, indent=2))
    update_entry(args.out, args.label or args.run_dir.name, result)


if __name__ == "__main__":
    main()
