"""``gensid report``: one self-contained HTML page about a trained run or an exported bundle.

The page (template ``run_page.html.j2``, inline CSS and JS, plots as base64 PNG) opens from disk
with no server and no network. It shows the headline metrics beside the baselines found for the
same data, the training curve, the config, the semantic IDs (a browsable code tree, or for
parallel SIDs the digits' usage and the items nearest a few digit values), code usage and
perplexity, collisions, drift, hit@10 by target popularity against SASRec (``against``), and a
few test users with their top 10. What a folder cannot show (a bundle has no interactions; a
run without weights cannot rank) is left out with a visible note.

The numbers come from :mod:`gensid.report.page_numbers`, each on plain arrays; :func:`build_report`
loads the folder once and fills the template.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import numpy as np

from gensid.bundle import is_bundle, load_bundle
from gensid.config.sections import ExperimentConfig
from gensid.data import Catalog, LeaveOneOut
from gensid.errors import InputError
from gensid.eval.analysis import popularity_buckets, sid_drift
from gensid.evaluation import read_test_ranks, split_digest, training_popularity
from gensid.io import JsonlLog, atomic_write, load_tensors
from gensid.prepare import load_run, load_task
from gensid.quantize.product import ProductQuantizer
from gensid.quantize.sids import collision_rate
from gensid.report import plots
from gensid.report.page_numbers import (
    collision_groups,
    digit_values,
    example_rows,
    hits_by_bucket,
    metric_columns,
    metric_rows,
    sid_tree,
    split_metrics,
    usage_rows,
)
from gensid.run import Run, run_config
from gensid.side_by_side import subset

TITLE_CHARS = 90


# ---------------------------------------------------------------- the folder


@dataclass
class Subject:
    """What the page is about, loaded once: the config, the saved files, the catalog, and where
    present the data split and the trained run."""

    folder: Path
    cfg: ExperimentConfig
    bundle: bool
    catalog: Catalog
    metrics: dict
    log: list[dict]
    splits: LeaveOneOut | None  # None for a bundle
    run: Run | None  # with its weights; None for a run folder without model.safetensors

    @property
    def initial_codes(self) -> np.ndarray:
        """[N, L] the codes the run started with (``index/sids.safetensors``, without TIGER's extra code)."""
        codes = load_tensors(self.folder / "index" / "sids.safetensors")[0]["codes"].numpy()
        return codes if self.cfg.method.family == "parallel" else codes[:, : len(self.cfg.quantizer.codebook_sizes)]

    @property
    def codes(self) -> np.ndarray:
        """[N, L] the quantizer codes the model ranks with (joint runs: its final assignment)."""
        return self.run.quantizer_codes() if self.run is not None else self.initial_codes

    @property
    def sizes(self) -> list[int]:
        if self.cfg.method.family == "parallel":
            return [self.cfg.parallel.codebook_size] * self.cfg.parallel.digits
        return list(self.cfg.quantizer.codebook_sizes)


def open_subject(folder: Path) -> Subject:
    """Load a run folder (with its data split, and its weights when it has them) or a bundle."""
    if not (folder / "config.yaml").exists():
        raise InputError(f"{folder}: not a run folder or bundle (no config.yaml)")
    if (folder / "hybrid.json").exists():
        raise InputError(f"{folder}: a hybrid folder; report the run it mixes")
    log = JsonlLog(folder / "log.jsonl").read()  # [] for a bundle
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else {}
    if is_bundle(folder):
        run = load_bundle(folder)
        return Subject(folder, run.cfg, True, run.dataset.catalog, metrics, log, None, run)
    if (folder / "model.safetensors").exists():
        run = load_run(folder)
        return Subject(folder, run.cfg, False, run.dataset.catalog, metrics, log, run.splits, run)
    cfg = run_config(folder)
    _, dataset, splits, _ = load_task(cfg, progress=False)
    return Subject(folder, cfg, False, dataset.catalog, metrics, log, splits, None)


# ---------------------------------------------------------------- the page


def png(draw: Callable[[io.BytesIO], object]) -> str:
    """A plot as a ``data:`` URI: ``draw(buffer)`` writes the PNG (a :mod:`gensid.report.plots` call)."""
    buffer = io.BytesIO()
    draw(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def short(text: str) -> str:
    """A title as the page shows it: HTML entities of the source data decoded (Amazon titles hold
    ``&amp;``), cut to ``TITLE_CHARS``."""
    text = html.unescape(text)
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1] + "…"


def headline(s: Subject, against: Path | None) -> dict:
    """The metrics table (this run, its baselines, ``against``), training curve and summary."""
    ks = s.cfg.eval.ks
    systems = {f"{s.cfg.method.name} (this run)": split_metrics(s.folder)}
    own_sasrec = s.folder / "sasrec"
    if own_sasrec.is_dir() and (against is None or against.resolve() != own_sasrec.resolve()):
        systems["SASRec (RUN_DIR/sasrec)"] = split_metrics(own_sasrec)
    if against is not None:
        systems[f"against: {against.name}"] = split_metrics(against)
    if s.metrics.get("most_popular"):
        systems["most popular"] = s.metrics["most_popular"]
    columns = metric_columns(ks)
    epochs = [e for e in s.log if e.get("event") == "epoch"]
    curve = None
    if epochs:
        watched = [m for m in ("recall@10", "ndcg@10") if all(m in e.get("valid", {}) for e in epochs)]
        curve = {"loss": png(lambda b: plots.per_epoch({"training loss": [(e["epoch"], e["loss"]) for e in epochs]},
                                                         "loss", "training loss per epoch", b)),
                 "valid": png(lambda b: plots.per_epoch(
                     {f"valid {m}": [(e["epoch"], e["valid"][m]) for e in epochs] for m in watched},
                     "metric", "validation per epoch", b)) if watched else None}
    m = s.metrics
    facts = [("dataset", m.get("dataset", "")), ("method", s.cfg.method.name), ("task", s.cfg.data.task),
             ("items", len(s.catalog))]
    if s.splits is not None:
        facts.append(("test users", len(s.splits.test)))
    if m:
        facts += [("epochs (best)", f"{m.get('epochs')} ({m.get('best_epoch')})"),
                  ("training minutes", f"{m.get('train_minutes', 0) + m.get('init_train_minutes', 0):.1f}"),
                  ("commit", m.get("commit", ""))]
    return {"columns": columns, "rows": metric_rows({k: v for k, v in systems.items() if v}, columns),
            "missing": [k for k, v in systems.items() if not v], "curve": curve, "facts": facts}


def config_summary(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """The config fields a reader asks about first (the whole config.yaml is on the page too)."""
    c = cfg
    rows = [("data", f"{c.data.source} ({c.data.format}), history {c.data.max_history}, text {', '.join(c.data.text_fields)}"),
            ("text model", c.text.model)]
    if c.method.family == "parallel":
        p = c.parallel
        rows.append(("digits", f"{p.digits} x {p.codebook_size} codes, opq {p.opq}, head {p.head}, loss {p.loss}, "
                               f"item vectors {p.item_ids}"))
    else:
        q = c.quantizer
        rows.append(("quantizer", f"{q.method} {q.codebook_sizes}, geometry {q.geometry}"))
    settings = ", ".join(f"{k} {v}" for k, v in c.method.model_dump().items() if k != "name")
    rows.insert(0, ("method", c.method.name + (f" ({settings})" if settings else "")))
    md = c.model
    rows += [("model", f"d_model {md.d_model}, heads {md.n_heads}, layers {md.encoder_layers}+{md.decoder_layers}, "
                       f"d_ff {md.d_ff}, dropout {md.dropout}, history {md.history_input}"),
             ("training", f"{c.train.epochs} epochs, batch {c.train.batch_size}, lr {c.train.lr}, seed {c.train.seed}, "
                          f"max {c.train.max_minutes:g} min"),
             ("evaluation", f"ks {c.eval.ks}, beam {c.eval.beam_size}")]
    return rows


def item_order(s: Subject) -> np.ndarray:
    """[N] item ids, most training-popular first (item-id order for a bundle, which has no data)."""
    if s.splits is None:
        return np.arange(len(s.catalog))
    return np.argsort(-training_popularity(s.splits, len(s.catalog)), kind="stable")


def semantic_ids(s: Subject) -> dict:
    """The SID section: usage per level, collisions, drift, and the tree (or the digit values)."""
    if s.run is None and not (s.folder / "index" / "sids.safetensors").exists():
        return {"note": f"{s.folder} has neither model.safetensors nor index/sids.safetensors (a run's weights "
                        "and index files stay on the machine that trained it): no codes to show"}
    codes, sizes = s.codes, s.sizes
    parallel = s.cfg.method.family == "parallel"
    title = lambda i: short(s.catalog.title(i))  # noqa: E731
    usage = usage_rows(codes, sizes, "digit" if parallel else "level")
    by_perplexity = np.argsort([u["perplexity"] for u in usage], kind="stable")  # positions, least even first
    # many digits: plot the least and the most evenly used, not one line each
    plotted = [by_perplexity[0], by_perplexity[-1]] if parallel else range(len(usage))
    counts = {usage[i]["name"]: np.bincount(codes[:, i], minlength=sizes[i]) for i in plotted}
    out = {"parallel": parallel, "usage": usage,
           "usage_plot": png(lambda b: plots.code_usage(counts, "items per code, sorted", b)),
           "collision_rate": collision_rate(codes),
           "collisions": [[title(int(i)) for i in group[:6]] + ([f"… {len(group) - 6} more"] if len(group) > 6 else [])
                          for group in collision_groups(codes)],
           "notes": []}
    if s.cfg.method.family == "joint":
        drift = [(e["epoch"], e["analysis"]["drift_cumulative"]) for e in s.log
                 if e.get("event") == "epoch" and "drift_cumulative" in e.get("analysis", {})]
        out["drift"] = sid_drift(s.initial_codes, codes) if s.run is not None else None
        out["drift_plot"] = png(lambda b: plots.per_epoch({"since the start": drift}, "share of items whose SID changed",
                                                            "SID drift per epoch", b)) if drift else None
        if s.run is None:
            out["notes"].append("no model.safetensors: the codes shown are the initial ones, not the learned index")
    if parallel:
        quantizer = ProductQuantizer.load(s.folder / "index" / "pq.safetensors")
        text = load_tensors(s.folder / "index" / "item_text.safetensors")[0]["vectors"].numpy()
        digits = sorted({int(by_perplexity[i]) for i in (0, len(usage) // 2, -1)})  # least, median, most even
        out["digits"] = [{**d, "usage": usage[d["digit"]],
                          "values": [{**v, "nearest": [title(int(i)) for i in v["nearest"]]} for v in d["values"]]}
                         for d in digit_values(codes, quantizer.digit_distances(text), digits, 8, 5)]
        out["perplexity_plot"] = png(lambda b: plots.bars({str(i + 1): u["perplexity"] for i, u in enumerate(usage)},
                                                          "perplexity", "perplexity of each digit's codes", b))
    else:
        out["tree"] = sid_tree(codes, title, item_order(s))
    return out


def popularity_section(s: Subject, against: Path | None) -> dict:
    """Hit@10 by the popularity bucket of the test target, this run against ``against``."""
    if against is None:
        return {"note": "give --against SASREC_RUN_DIR to compare hit@10 per popularity bucket with SASRec"}
    if s.splits is None:
        return {"note": "a bundle holds no interactions: the popularity buckets need the run folder and its data"}
    own, theirs = read_test_ranks(s.folder), read_test_ranks(against)
    if own is None or theirs is None:
        missing = s.folder if own is None else against
        return {"note": f"{missing} has no test_ranks.json"}
    digest = split_digest(s.splits.test, s.splits.new_targets(s.splits.test))
    if own["test_users"] != digest or theirs["test_users"] != digest:
        raise InputError(f"--against {against}: ranked on other test users than {s.folder} "
                         "(another data set or split); give a SASRec run of the same data")
    bucket = popularity_buckets(training_popularity(s.splits, len(s.catalog)))[s.splits.test.targets]
    name = against.name
    rows = hits_by_bucket({"run": own["ranks"], "against": theirs["ranks"]}, bucket)
    plot = png(lambda b: plots.buckets({"this run": [r["run"] for r in rows], name: [r["against"] for r in rows]},
                                       "test hit@10", "hit@10 by the target's popularity", b))
    return {"rows": rows, "against": name, "plot": plot}


def examples_section(s: Subject) -> dict:
    """A few test users: recent history, target, top 10 with the hit marked (needs the weights)."""
    if s.splits is None:
        return {"note": "a bundle holds no interactions: example users need the run folder and its data"}
    if s.run is None:
        return {"note": "this run folder has no model.safetensors: example users need the trained weights"}
    if s.cfg.data.task != "rec":
        return {"note": "example users are shown for recommendation runs"}
    test = s.splits.test
    saved = read_test_ranks(s.folder)
    ranks = saved["ranks"] if saved is not None and len(saved["ranks"]) == len(test) else s.run.target_ranks(test)
    rows = example_rows(ranks)
    ranked = s.run.rank(subset(test, rows), beam_size=max(10, s.cfg.eval.beam_size))
    users = []
    for row, top in zip(rows, ranked, strict=True):
        target = int(test.targets[row])
        history = [int(i) for i in test.histories[row] if i >= 0]
        users.append({"rank": int(ranks[row]), "history": [short(s.catalog.title(i)) for i in history[-8:]],
                      "older": max(len(history) - 8, 0), "target": short(s.catalog.title(target)),
                      "top": [(short(s.catalog.title(int(i))), int(i) == target) for i in top[:10] if i >= 0]})
    return {"users": users}


def build_report(folder: str | Path, against: str | Path | None = None) -> str:
    """The HTML page of the run folder or bundle ``folder``; ``against``: a SASRec run folder
    (``test_ranks.json``, and its metrics) on the same data."""
    folder = Path(folder)
    against = Path(against) if against is not None else None
    if against is not None and not (against / "test_ranks.json").exists():
        raise InputError(f"--against {against}: no test_ranks.json there; give a baseline run folder "
                         "(gensid baseline, or RUN_DIR/sasrec of gensid train --sasrec-minutes)")
    start = time.perf_counter()
    s = open_subject(folder)
    page = {"name": s.cfg.name, "folder": str(folder), "bundle": s.bundle,
            "built": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "headline": headline(s, against), "config": config_summary(s.cfg),
            "config_yaml": (folder / "config.yaml").read_text(), "sid": semantic_ids(s),
            "popularity": popularity_section(s, against), "examples": examples_section(s)}
    page["seconds"] = time.perf_counter() - start
    return template().render(**page)


def template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda x, digits=4: "" if x is None else f"{x:.{digits}f}"
    return env.get_template("run_page.html.j2")


def write_report(folder: str | Path, out: str | Path, against: str | Path | None = None) -> Path:
    """Write :func:`build_report` to ``out`` (atomically); returns ``out``."""
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: a folder; give the HTML file's name")
    html = build_report(folder, against)
    atomic_write(out, lambda path: path.write_text(html, encoding="utf-8"))
    return out
