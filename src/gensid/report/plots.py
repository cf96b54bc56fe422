"""PNG plots of an experiment's or a run's analyses (matplotlib, no display needed). Each function
writes to a file path, or into an open binary file (e.g. ``io.BytesIO``, for a page that embeds it)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _colours(count: int) -> list:
    """Distinct colours for ``count`` series: the default ten repeat beyond ten."""
    return [plt.get_cmap("tab10" if count <= 10 else "tab20")(i) for i in range(count)]


Target = Path | BinaryIO  # a PNG file to write, or an open binary file to write the PNG into


def _save(fig: plt.Figure, path: Target) -> Target:
    if isinstance(path, Path):
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def per_epoch(series: dict[str, list[tuple[int, float]]], ylabel: str, title: str, path: Target) -> Target:
    """One line per variant: ``series[label] = [(epoch, value), ...]``."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (label, points), colour in zip(series.items(), _colours(len(series)), strict=True):
        if points:
            x, y = zip(*points, strict=True)
            ax.plot(x, y, marker="o", label=label, color=colour)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def code_usage(histograms: dict[str, list[int]], title: str, path: Target) -> Target:
    """Sorted code counts of one level per variant (a collapsed codebook is a spike then zeros)."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (label, counts), colour in zip(histograms.items(), _colours(len(histograms)), strict=True):
        ax.plot(np.sort(np.asarray(counts))[::-1], label=label, color=colour)
    ax.set(xlabel="code rank", ylabel="items assigned", title=title, yscale="symlog")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def buckets(values: dict[str, list[float]], ylabel: str, title: str, path: Target) -> Target:
    """Grouped bars over popularity buckets (head -> tail), one group member per variant."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    labels = list(values)
    width = 0.8 / max(len(labels), 1)
    for i, (label, colour) in enumerate(zip(labels, _colours(len(labels)), strict=True)):
        ys = values[label]
        ax.bar(np.arange(len(ys)) + i * width, ys, width, label=label, color=colour)
    n = max((len(v) for v in values.values()), default=0)
    ax.set_xticks(np.arange(n) + 0.4 - width / 2, [f"{'head' if b == 0 else 'tail' if b == n - 1 else b}"
                                                   for b in range(n)])
    ax.set(xlabel="item popularity bucket", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _save(fig, path)


def per_step(series: dict[str, list[float]], ylabel: str, title: str, path: Target) -> Target:
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for (label, ys), colour in zip(series.items(), _colours(len(series)), strict=True):
        ax.plot(ys, label=label, linewidth=0.7, color=colour)
    ax.set(xlabel="training step", ylabel=ylabel, title=title, yscale="log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def bars(values: dict[str, float], ylabel: str, title: str, path: Target) -> Target:
    """One bar per labelled value, in the given order (e.g. the perplexity of each digit)."""
    fig, ax = plt.subplots(figsize=(6.4, 3))
    ax.bar(range(len(values)), list(values.values()), color=_colours(1)[0])
    ax.set_xticks(range(len(values)), list(values), fontsize=7)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
