"""Speed of gensid against a transformers T5 (TIGER-style input), in one run on the same inputs.

1. Training throughput (samples/s) of fwd + bwd + grad clip + AdamW step, on the same
   training batches (batch 256) of Amazon Beauty (leave-one-out, history 20):
   - gensid ``GenerativeRecommender`` (default ``ModelConfig``: one encoder token per
     history item), on plain random batches and on ``length_bucketed_batches`` (how
     gensid trains);
   - ``T5ForConditionalGeneration`` of the same size reading one token per code (up to
     20 items x 4 codes = 80 tokens, right-padded to the longest row of the batch as a
     HF collator would), trained to emit the 4 target codes; on the same random batches
     (HF's default sampler) and on the same bucketed batches (HF ``group_by_length``).
   Both bucketed runs are timed again with bfloat16 autocast (``train.bf16``: matmuls in bf16,
   backward outside the autocast context), which pays on CPUs with native bf16 (AVX512-BF16, AMX).
2. Trie-constrained beam search, beam 20, top-20 items, on the same test users:
   users/s at batch 256 and median latency at batch 1; gensid's
   ``constrained_beam_search`` against ``generate(num_beams=20, num_return_sequences=20,
   prefix_allowed_tokens_fn=...)`` with a trie of the same valid SIDs. Every SID that HF
   returns is checked against the index.

Steps of the competitors are interleaved (one gensid step, one T5 step, ...) so that a
concurrent load on the machine hits both alike; ratios, not absolute times, are the
result. Models keep random weights (speed does not depend on training).

    .venv/bin/python benchmarks/speed.py --threads 2 --train-batches 30 --users 512
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from gensid.config import ModelConfig, QuantizerConfig
from gensid.data import Samples, leave_one_out, load_dataset
from gensid.index import SIDIndex, constrained_beam_search
from gensid.io import write_json
from gensid.model import GenerativeRecommender
from gensid.quantize import fit_semantic_ids
from gensid.report.results import git_commit
from gensid.text import embed_texts
from gensid.train.batches import Batch, ItemFeatures
from gensid.train.trainer import autocast, length_bucketed_batches, native_bf16

ROOT = Path(__file__).resolve().parent
DEFAULT_DATA = ROOT.parent.parent / "shared" / "data" / "amazon-beauty"
PAD, EOS, FIRST_CODE = 0, 1, 2  # T5 token ids: pad (also decoder start), eos, then the code tokens


# ----------------------------------------------------------------------------- machine


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


AFFINITY_SEEN: set[tuple[int, ...]] = set()
OTHERS_SEEN: dict[str, float] = {}  # command of another busy process -> highest %CPU seen


def busy_processes(min_cpu: float = 20.0) -> list[tuple[str, float]]:
    """Other processes using >= ``min_cpu`` % CPU (ps: CPU time / elapsed time), this one excluded."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True,
                             text=True, check=True).stdout.splitlines()[1:]
    except (OSError, subprocess.CalledProcessError):
        return []
    found = []
    for line in out:
        pid, pcpu, args = (line.split(None, 2) + [""])[:3]
        try:
            if int(pid) != os.getpid() and float(pcpu) >= min_cpu and not args.startswith("ps -eo"):
                found.append((f"pid {pid}: {args[:100]}", float(pcpu)))
        except ValueError:
            continue
    return found


def watch_machine() -> None:
    """Sample, while the benchmark runs, the CPUs we may use and the other busy processes."""
    if hasattr(os, "sched_getaffinity"):
        AFFINITY_SEEN.add(tuple(sorted(os.sched_getaffinity(0))))
    for name, pcpu in busy_processes():
        OTHERS_SEEN[name] = max(pcpu, OTHERS_SEEN.get(name, 0.0))


def other_load() -> dict:
    """Load average and the other processes using CPU right now (the benchmark excluded)."""
    watch_machine()
    return {"loadavg": [round(x, 2) for x in os.getloadavg()],
            "busy_processes": [f"{name} ({pcpu:.0f}% CPU)" for name, pcpu in busy_processes()[:5]]}


# ----------------------------------------------------------------------------- data


def load_inputs(data: str, max_history: int, seed: int):
    """Dataset, leave-one-out splits and semantic IDs (RQ-KMeans 3x256 + disambiguation code)."""
    if data == "auto":
        data = str(DEFAULT_DATA) if DEFAULT_DATA.exists() else "movielens-100k"
    dataset = load_dataset(data)
    splits = leave_one_out(dataset.interactions, max_history)
    start = time.perf_counter()
    vectors = embed_texts(dataset.catalog.texts, progress=False)  # cached on disk after the first run
    embed_s = time.perf_counter() - start
    _, sids, _ = fit_semantic_ids(vectors, QuantizerConfig(), seed, progress=False)
    return data, dataset, splits, sids, embed_s


class T5Inputs:
    """History -> one T5 token per code (offset per level), right-padded to the batch's longest row."""

    def __init__(self, codes: np.ndarray, sizes: list[int]):
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + FIRST_CODE
        self.tokens = torch.from_numpy(codes + self.offsets)  # [N, L] token of every item's codes
        self.vocab = int(FIRST_CODE + sum(sizes))
        self.sizes = list(sizes)

    def encoder_inputs(self, histories: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """histories [B, H] item ids left-padded with -1 -> input_ids, attention_mask [B, T]."""
        lengths = (histories >= 0).sum(1)
        width = int(lengths.max()) * self.tokens.shape[1]
        ids = torch.full((len(histories), max(width, 1)), PAD, dtype=torch.long)
        for i, row in enumerate(histories):
            items = row[row >= 0]
            if len(items):
                flat = self.tokens[torch.from_numpy(items)].reshape(-1)
                ids[i, :len(flat)] = flat
        return ids, (ids != PAD).long()

    def batch(self, samples: Samples, rows: np.ndarray) -> dict[str, torch.Tensor]:
        ids, mask = self.encoder_inputs(samples.histories[rows])
        return {"input_ids": ids, "attention_mask": mask,
                "labels": self.tokens[torch.from_numpy(samples.targets[rows])]}

    def to_codes(self, tokens: torch.Tensor) -> torch.Tensor:
        """Generated tokens [N, L] -> codes [N, L] (-1 where a token is not a code of its level)."""
        codes = tokens - torch.as_tensor(self.offsets)
        sizes = torch.as_tensor(self.sizes)
        return torch.where((codes >= 0) & (codes < sizes), codes, torch.full_like(codes, -1))


def sid_trie(tokens: torch.Tensor) -> dict[tuple[int, ...], list[int]]:
    """All valid token prefixes -> the tokens allowed next (the trie of the valid SIDs)."""
    trie: dict[tuple[int, ...], set[int]] = {}
    for row in tokens.tolist():
        for m in range(len(row)):
            trie.setdefault(tuple(row[:m]), set()).add(row[m])
    return {prefix: sorted(allowed) for prefix, allowed in trie.items()}


# ----------------------------------------------------------------------------- models


def build_t5(vocab: int, cfg: ModelConfig):
    from transformers import T5Config, T5ForConditionalGeneration

    t5cfg = T5Config(vocab_size=vocab, d_model=cfg.d_model, d_ff=cfg.d_ff, d_kv=cfg.d_model // cfg.n_heads,
                     num_layers=cfg.encoder_layers, num_decoder_layers=cfg.decoder_layers,
                     num_heads=cfg.n_heads, dropout_rate=cfg.dropout, pad_token_id=PAD, eos_token_id=EOS,
                     decoder_start_token_id=PAD)
    return T5ForConditionalGeneration(t5cfg)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gensid_step(model: GenerativeRecommender, opt: torch.optim.Optimizer, batch: Batch,
                bf16: bool = False) -> float:
    """One training step exactly as ``Trainer.train_epoch`` does it (bf16: ``train.bf16``)."""
    with autocast(bf16):
        logits = model(batch.history_codes, batch.history_mask, batch.target_codes, batch.history_text)
        loss = model.loss(logits, batch.target_codes)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def t5_step(model, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], bf16: bool = False) -> float:
    with autocast(bf16):
        loss = model(**batch).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- benchmarks


def bench_train(gen: GenerativeRecommender, t5, train: Samples, items: ItemFeatures, t5in: T5Inputs,
                n_batches: int, warmup: int, batch_size: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    random_rows = [rng.choice(len(train), batch_size, replace=False) for _ in range(warmup + n_batches)]
    bucketed_rows = [b for b in length_bucketed_batches(train, batch_size, rng) if len(b) == batch_size]
    bucketed_rows = bucketed_rows[:warmup + n_batches]
    # inputs are built before timing so only the model step is measured, for both sides
    gensid_random = [Batch.build(train, r, items) for r in random_rows]
    gensid_bucketed = [Batch.build(train, r, items) for r in bucketed_rows]
    t5_random = [t5in.batch(train, r) for r in random_rows]
    t5_bucketed = [t5in.batch(train, r) for r in bucketed_rows]
    runs = {
        "gensid": (gen, gensid_step, gensid_random),
        "gensid_bucketed": (gen, gensid_step, gensid_bucketed),
        "hf_t5": (t5, t5_step, t5_random),
        "hf_t5_bucketed": (t5, t5_step, t5_bucketed),
        # the same bucketed steps with bfloat16 autocast (train.bf16) on both sides
        "gensid_bucketed_bf16": (gen, partial(gensid_step, bf16=True), gensid_bucketed),
        "hf_t5_bucketed_bf16": (t5, partial(t5_step, bf16=True), t5_bucketed),
    }
    opts = {model: torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01) for model in (gen, t5)}
    gen.train()
    t5.train()
    seconds = dict.fromkeys(runs, 0.0)
    for i in range(warmup + n_batches):  # interleaved: a concurrent load hits every run alike
        watch_machine()
        for name, (model, step, batches) in runs.items():
            took = timed(step, model, opts[model], batches[i])
            if i >= warmup:
                seconds[name] += took
        if (i + 1) % 5 == 0 or i + 1 == warmup + n_batches:
            print(f"  step {i + 1}/{warmup + n_batches}: " + ", ".join(
                f"{name} {s / max(i + 1 - warmup, 1):.2f} s/step" for name, s in seconds.items()), flush=True)
    samples = n_batches * batch_size

    def tokens(name: str) -> float:
        kind = runs[name][2][warmup:]
        if name.startswith("gensid"):
            return float(np.mean([b.history_mask.shape[1] for b in kind]))
        return float(np.mean([b["input_ids"].shape[1] for b in kind]))

    return {"samples_per_s": {name: samples / s for name, s in seconds.items()},
            "s_per_step": {name: s / n_batches for name, s in seconds.items()},
            "mean_encoder_tokens_per_row": {name: tokens(name) for name in runs}}


def gensid_search(model, index, items, test, rows, beam):
    batch = Batch.build(test, rows, items)
    return constrained_beam_search(model, index, batch.history_codes, batch.history_mask, beam,
                                   batch.history_text).items


def hf_search(t5, t5in, trie, test, rows, beam):
    ids, mask = t5in.encoder_inputs(test.histories[rows])
    levels = len(t5in.sizes)

    def allowed(_: int, sent: torch.Tensor) -> list[int]:
        return trie.get(tuple(sent[1:].tolist()), [EOS]) if len(sent) <= levels else [EOS]

    with torch.no_grad():
        out = t5.generate(input_ids=ids, attention_mask=mask, num_beams=beam, num_return_sequences=beam,
                          max_new_tokens=levels, prefix_allowed_tokens_fn=allowed, do_sample=False)
    return out[:, 1:1 + levels]  # drop the decoder start token


def bench_beam(gen, t5, index: SIDIndex, items, t5in, test: Samples, users: int, latency_users: int,
               beam: int, batch_size: int, seed: int) -> dict:
    gen.eval()
    t5.eval()
    trie = sid_trie(t5in.tokens)
    rng = np.random.default_rng(seed + 1)
    chosen = rng.permutation(len(test))
    big = [chosen[i:i + batch_size] for i in range(0, min(users, len(test)), batch_size)]
    single = [chosen[i:i + 1] for i in range(latency_users)]
    # warm-up on a few users (not timed)
    gensid_search(gen, index, items, test, big[0][:8], beam)
    hf_search(t5, t5in, trie, test, big[0][:8], beam)
    checked = valid = 0
    gen_valid = gen_total = 0
    t_gen = t_hf = 0.0
    for rows in big:
        watch_machine()
        start = time.perf_counter()
        found = gensid_search(gen, index, items, test, rows, beam)
        t_gen += time.perf_counter() - start
        gen_valid += int((found >= 0).sum())
        gen_total += found.numel()
        start = time.perf_counter()
        seqs = hf_search(t5, t5in, trie, test, rows, beam)
        t_hf += time.perf_counter() - start
        codes = t5in.to_codes(seqs)
        ok = (codes >= 0).all(1) & index.is_valid(codes.clamp(min=0))
        checked += len(codes)
        valid += int(ok.sum())
        print(f"  batch of {len(rows)}: gensid {t_gen:.1f} s, hf {t_hf:.1f} s so far", flush=True)
    n_users = sum(len(r) for r in big)
    lat_gen, lat_hf = [], []
    for rows in single:
        watch_machine()
        lat_gen.append(timed(gensid_search, gen, index, items, test, rows, beam))
        start = time.perf_counter()
        seqs = hf_search(t5, t5in, trie, test, rows, beam)
        lat_hf.append(time.perf_counter() - start)
        codes = t5in.to_codes(seqs)
        checked += len(codes)
        valid += int(((codes >= 0).all(1) & index.is_valid(codes.clamp(min=0))).sum())
    return {
        "users": n_users, "latency_users": len(single),
        "users_per_s": {"gensid": n_users / t_gen, "hf_generate": n_users / t_hf},
        "latency_ms": {"gensid_median": 1000 * float(np.median(lat_gen)),
                       "hf_generate_median": 1000 * float(np.median(lat_hf)),
                       "gensid_p90": 1000 * float(np.percentile(lat_gen, 90)),
                       "hf_generate_p90": 1000 * float(np.percentile(lat_hf, 90))},
        "hf_sids_checked": checked, "hf_sids_valid": valid,
        "gensid_items_returned": gen_valid, "gensid_slots": gen_total,
    }


def profile(gen, index, items, train, test, batch_size, beam) -> None:
    """Print where gensid spends its time in one training step and one batch of beam search."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rows = np.arange(min(batch_size, len(train)))
    batch = Batch.build(train, rows, items)
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-3)
    gen.train()
    gensid_step(gen, opt, batch)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        gensid_step(gen, opt, batch)
    print(f"\n== gensid training step (batch {len(rows)}, {batch.history_mask.shape[1]} history slots) ==")
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25))
    gen.eval()
    rows = np.arange(min(batch_size, len(test)))
    gensid_search(gen, index, items, test, rows, beam)
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        gensid_search(gen, index, items, test, rows, beam)
    print(f"\n== gensid constrained_beam_search (batch {len(rows)}, beam {beam}) ==")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))


# ----------------------------------------------------------------------------- main


def comparison(train: dict, beam: dict, args: argparse.Namespace) -> dict:
    """The results-file keys of one measurement (one thread count)."""
    sps, ups, lat = train["samples_per_s"], beam["users_per_s"], beam["latency_ms"]
    return {
        "train_samples_per_s": {
            "gensid": sps["gensid"], "gensid_bucketed": sps["gensid_bucketed"], "hf_t5": sps["hf_t5"],
            "hf_t5_bucketed": sps["hf_t5_bucketed"],
            "ratio": sps["gensid_bucketed"] / sps["hf_t5"],
            "ratio_unbucketed": sps["gensid"] / sps["hf_t5"],
            "ratio_both_bucketed": sps["gensid_bucketed"] / sps["hf_t5_bucketed"],
            "gensid_bucketed_bf16": sps["gensid_bucketed_bf16"], "hf_t5_bucketed_bf16": sps["hf_t5_bucketed_bf16"],
            "ratio_both_bucketed_bf16": sps["gensid_bucketed_bf16"] / sps["hf_t5_bucketed_bf16"],
            "bf16_speedup": {"gensid": sps["gensid_bucketed_bf16"] / sps["gensid_bucketed"],
                             "hf_t5": sps["hf_t5_bucketed_bf16"] / sps["hf_t5_bucketed"]},
            "s_per_step": train["s_per_step"],
            "mean_encoder_tokens_per_row": train["mean_encoder_tokens_per_row"],
            "timed_batches": args.train_batches, "batch_size": args.batch_size,
        },
        "beam20_users_per_s_batch256": {
            "gensid": ups["gensid"], "hf_generate": ups["hf_generate"],
            "ratio": ups["gensid"] / ups["hf_generate"], "users": beam["users"], "batch_size": args.batch_size,
        },
        "beam20_latency_ms_batch1": {
            **lat, "ratio": lat["hf_generate_median"] / lat["gensid_median"], "users": beam["latency_users"],
        },
        "hf_sids_valid": {"checked": beam["hf_sids_checked"], "valid": beam["hf_sids_valid"],
                          "all_valid": beam["hf_sids_checked"] == beam["hf_sids_valid"]},
        "gensid_items_returned": {"returned": beam["gensid_items_returned"], "slots": beam["gensid_slots"]},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--also-threads", type=int, nargs="*", default=[],
                   help="repeat the whole measurement at these thread counts too (same inputs)")
    p.add_argument("--train-batches", type=int, default=30, help="timed training steps per model")
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--users", type=int, default=512, help="test users for the batch-256 beam search")
    p.add_argument("--latency-users", type=int, default=50, help="single users for the batch-1 latency")
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--data", default="auto", help="data folder; auto = ../shared/data/amazon-beauty, "
                   "else movielens-100k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print torch.profiler tables of gensid first")
    p.add_argument("--out", default=str(ROOT.parent / "research" / "results" / "speed.json"))
    p.add_argument("--note", default="", help="free text appended to the notes")
    args = p.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up in a nohup log

    torch.set_num_threads(args.threads)
    watch_machine()
    load_before = other_load()
    data, dataset, splits, sids, embed_s = load_inputs(args.data, 20, args.seed)
    index = SIDIndex(sids.codes, sids.sizes)
    items = ItemFeatures(torch.from_numpy(sids.codes))
    t5in = T5Inputs(sids.codes, sids.sizes)
    cfg = ModelConfig()

    def models():
        torch.manual_seed(args.seed)
        return GenerativeRecommender(sids.sizes, cfg, max_history=20), build_t5(t5in.vocab, cfg)

    gen, t5 = models()
    print(f"data {data}: {len(dataset.catalog)} items, {len(splits.train)} training samples, "
          f"{len(splits.test)} test users; SID sizes {sids.sizes}")
    print(f"params: gensid {n_params(gen):,}  hf_t5 {n_params(t5):,}  (T5 vocab {t5in.vocab})")
    if args.profile:
        profile(gen, index, items, splits.train, splits.test, args.batch_size, args.beam)

    runs: dict[int, dict] = {}
    loads: dict[int, dict] = {}
    for threads in [args.threads, *[t for t in args.also_threads if t != args.threads]]:
        torch.set_num_threads(threads)
        gen, t5 = models()  # fresh, identical weights for every thread count
        print(f"\n[threads {threads}] training: {args.train_batches} timed steps (+{args.warmup} warm-up) "
              f"per run, batch {args.batch_size}")
        train = bench_train(gen, t5, splits.train, items, t5in, args.train_batches, args.warmup,
                            args.batch_size, args.seed)
        print(f"[threads {threads}] beam search: beam {args.beam}, {args.users} users at batch "
              f"{args.batch_size}, {args.latency_users} users at batch 1")
        beam = bench_beam(gen, t5, index, items, t5in, splits.test, args.users, args.latency_users, args.beam,
                          args.batch_size, args.seed)
        runs[threads] = comparison(train, beam, args)
        loads[threads] = other_load()
        print_summary(runs[threads], threads, loads[threads])
    load_after = other_load()

    main_run = runs[args.threads]
    cores = os.cpu_count() or 1
    affinity = sorted(AFFINITY_SEEN)
    pinned = [list(a) for a in affinity if len(a) < cores]
    if pinned:
        warning_pin = (f" WARNING: while this ran, another job pinned this process to CPU(s) {pinned} of "
                       f"{cores} (sched_getaffinity), shared with other pinned processes; a run with more "
                       "threads than allowed CPUs time-slices its OpenMP threads on one core.")
    else:
        warning_pin = ""
    others = sorted(OTHERS_SEEN.items(), key=lambda kv: -kv[1])
    warning = (" WARNING: other jobs were using the CPUs during this run (sampled at every training step "
               f"and beam batch; see 'other_busy_processes_seen'): {len(others)} process(es), up to "
               f"{others[0][1]:.0f}% CPU. With more threads than free cores, every op's OpenMP barrier "
               "waits for a descheduled thread, so multi-thread timings then measure the scheduler more "
               "than the models; prefer the 1-thread numbers." if others else
               " No other process used >= 20% CPU at any sample during the run.") + warning_pin
    result = {
        **main_run,
        "params": {"gensid": n_params(gen), "hf_t5": n_params(t5), "t5_vocab": t5in.vocab,
                   "sid_sizes": sids.sizes, "d_model": cfg.d_model, "d_ff": cfg.d_ff,
                   "layers": [cfg.encoder_layers, cfg.decoder_layers], "heads": cfg.n_heads,
                   "t5_d_kv": cfg.d_model // cfg.n_heads, "dropout": cfg.dropout,
                   "gensid_history_input": cfg.history_input, "max_history": 20,
                   "t5_attn_implementation": getattr(t5.config, "_attn_implementation", None)},
        "data": {"source": data, "items": len(dataset.catalog), "train_samples": len(splits.train),
                 "test_users": len(splits.test), "embedding_seconds": round(embed_s, 1)},
        "threads": args.threads,
        "other_thread_counts": {str(t): r for t, r in runs.items() if t != args.threads},
        "weights": "random (untrained) for both models",
        "machine": machine(),
        "command": shlex.join([os.path.relpath(sys.executable), *sys.argv]) if argv is None else
        shlex.join(["benchmarks/speed.py", *argv]),
        "commit": git_commit(),
        "cpu_affinity_seen": [list(a) for a in affinity],
        "other_busy_processes_seen": [f"{name} (up to {pcpu:.0f}% CPU)" for name, pcpu in others[:8]],
        "load": {"before": load_before, "after_each_thread_count": {str(t): v for t, v in loads.items()}},
        "notes": (
            "Both models have random (untrained) weights: speed does not depend on them, but the "
            "beam paths do not correspond to trained preferences. fp32 on CPU (the *_bf16 runs: "
            "bfloat16 autocast of the forward pass; native bf16 on this CPU: "
            f"{native_bf16()}), dropout 0.1 on both. "
            "Training step = forward + loss + backward + clip_grad_norm(1.0) + AdamW, inputs built "
            "before timing for both. gensid: one encoder token per history item (trimmed to the "
            "batch's longest history); T5: one token per code (4 per item), right-padded to the "
            "batch's longest row, labels = the 4 target codes. Random and bucketed batches are the "
            "same rows for both models; 'ratio' = gensid_bucketed / hf_t5 (random batches, HF's "
            "default sampler); 'ratio_both_bucketed' gives T5 the same bucketed batches (HF "
            "group_by_length). Beam: users/s ratio = gensid / hf; latency ratio = hf / gensid "
            "(both: higher = gensid faster); every SID HF returned was checked against the index "
            "(hf_sids_valid). Competitor steps are interleaved so that a concurrent load hits both; "
            f"load average before {load_before['loadavg']}, after {load_after['loadavg']}; other busy "
            f"processes before: {load_before['busy_processes'] or 'none'}; after: "
            f"{load_after['busy_processes'] or 'none'}." + warning + (f" {args.note}" if args.note else "")
        ),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


def print_summary(r: dict, threads: int, load: dict) -> None:
    t, b, lat = r["train_samples_per_s"], r["beam20_users_per_s_batch256"], r["beam20_latency_ms_batch1"]
    tok = t["mean_encoder_tokens_per_row"]
    print(f"\n== threads {threads}: training throughput (samples/s, higher is better) ==")
    print(f"  gensid, random batches    {t['gensid']:9.1f}   ({tok['gensid']:.1f} encoder tokens/row)")
    print(f"  gensid, bucketed batches  {t['gensid_bucketed']:9.1f}   ({tok['gensid_bucketed']:.1f})")
    print(f"  HF T5,  random batches    {t['hf_t5']:9.1f}   ({tok['hf_t5']:.1f})")
    print(f"  HF T5,  bucketed batches  {t['hf_t5_bucketed']:9.1f}   ({tok['hf_t5_bucketed']:.1f})")
    print(f"  gensid, bucketed, bf16    {t['gensid_bucketed_bf16']:9.1f}   "
          f"({t['bf16_speedup']['gensid']:.2f}x its fp32)")
    print(f"  HF T5,  bucketed, bf16    {t['hf_t5_bucketed_bf16']:9.1f}   "
          f"({t['bf16_speedup']['hf_t5']:.2f}x its fp32)")
    print(f"  ratio gensid_bucketed / hf_t5 = {t['ratio']:.2f}x (target >= 3x); unbucketed "
          f"{t['ratio_unbucketed']:.2f}x; both bucketed {t['ratio_both_bucketed']:.2f}x")
    print(f"== threads {threads}: beam search, beam 20, top 20 ==")
    print(f"  batch {b['batch_size']}: gensid {b['gensid']:.1f} users/s, HF generate {b['hf_generate']:.1f} users/s, "
          f"ratio {b['ratio']:.2f}x (target >= 5x)")
    print(f"  batch 1 median latency: gensid {lat['gensid_median']:.1f} ms, HF generate "
          f"{lat['hf_generate_median']:.1f} ms, ratio {lat['ratio']:.2f}x")
    v = r["hf_sids_valid"]
    print(f"  HF SIDs valid: {v['valid']}/{v['checked']}")
    print(f"  load now: {load}")


if __name__ == "__main__":
    main()
