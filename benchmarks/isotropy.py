"""Isotropy of the learned item space (DGI's analysis in DESIGN.md), for finished joint runs.

    python benchmarks/isotropy.py research/experiments/office-ablation/runs/*/

For each joint run folder with weights: the isotropy (``gensid.eval.analysis.isotropy``: mean
pairwise cosine, partition ratio, effective dimensions) of its item vectors (``z_base``, the space
the codes are assigned in) and of its quantized vectors (the codebook sums the decoder reads);
and, once per data set, of the frozen text vectors every item encoder reads and of their centred
PCA projection to the latent size (where a linear encoder starts: ``RQVAE.init_encoder``). Runs trained
since the analysis was added carry the same numbers in ``metrics.json``; this script computes
them for older runs from their weights. Two-stage runs have no learned space and are skipped.
Writes ``<results-dir>/isotropy.json`` (default ``research/results``) (one entry per run folder, one per data set's text
vectors) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from gensid.config import QuantizerConfig
from gensid.eval.analysis import isotropy
from gensid.pipeline import load_run
from gensid.quantize.rqvae import RQVAE
from gensid.report.results import update_entry

RESULTS = Path(__file__).resolve().parents[1] / "research" / "results"  # the default of --results-dir

MEASURES = ("mean_cosine", "partition", "effective_dims")


def row(name: str, test_r10: float | None, values: dict) -> str:
    r10 = f"{test_r10:.4f}" if test_r10 is not None else ""
    return f"| {name} | {r10} | " + " | ".join(f"{values[m]:.3f}" for m in MEASURES) + " |"


@torch.no_grad()
def linear_encoder_start(x: torch.Tensor, dims: int) -> torch.Tensor:
    """[N, D] -> [N, dims]: what a linear item encoder of width ``dims`` first outputs
    (``RQVAE.init_encoder``: the centred vectors' PCA projection)."""
    tokenizer = RQVAE(x.shape[1], QuantizerConfig(method="rqvae", hidden_dims=[], latent_dim=dims))
    tokenizer.init_encoder(x)
    return tokenizer.encoder(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="folder of isotropy.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    path = args.results_dir / "isotropy.json"
    lines, text_done = [], set()
    for run_dir in sorted(args.run_dirs):
        run_dir = run_dir.rstrip("/")
        if not (Path(run_dir) / "model.safetensors").exists():
            print(f"skipped {run_dir}: no weights", file=sys.stderr)
            continue
        run = load_run(run_dir)
        if not run.joint:
            print(f"skipped {run_dir}: a two-stage run has no learned item space", file=sys.stderr)
            continue
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        r10 = metrics["test"].get("recall@10", metrics["test"].get("hit@10"))
        latent, data = run.cfg.quantizer.latent_dim, f"{run.dataset.name}-{run.cfg.data.task}"
        texts = f"text vectors: {data} ({', '.join(run.cfg.data.text_fields)}), latent {latent}"
        if texts not in text_done:  # the common starting points of the runs on these item texts
            text_done.add(texts)
            text = isotropy(run.text.numpy())
            pca = isotropy(linear_encoder_start(run.text, latent).numpy())
            update_entry(path, texts, {"dataset": run.dataset.name, "text_vectors": text,
                                       f"text_pca_{latent}": pca, "command": command})
            lines.append(row(f"{data}: frozen text vectors", None, text))
            lines.append(row(f"{data}: centred text, PCA-{latent} (a linear encoder's start)", None, pca))
        entry = {"dataset": run.dataset.name, "test_recall@10": r10,
                 "item_vectors": isotropy(run.items.item_vectors.numpy()),
                 "quantized": isotropy(run.items.quantized.numpy()), "command": command}
        update_entry(path, run_dir, entry)
        name = Path(run_dir).name
        lines.append(row(f"{name}: item vectors", r10, entry["item_vectors"]))
        lines.append(row(f"{name}: quantized", None, entry["quantized"]))
    print("| vectors | test R@10 | mean cosine | partition | effective dims |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
