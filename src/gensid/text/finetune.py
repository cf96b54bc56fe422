"""Fine-tuning the sentence encoder itself on a data set's training split (optional).

gensid's default keeps all-MiniLM-L6-v2 frozen and its vectors cached, which is what 2 CPU
cores afford. On a machine with time to spare, :func:`finetune_text_encoder` adapts the
encoder to the domain first: in-batch InfoNCE (sentence-transformers'
``MultipleNegativesRankingLoss``) on (anchor, clicked item text) pairs of the *training*
split only, the anchor being the query (search) or the previous item's text
(recommendation). It writes an ordinary sentence-transformers folder; a config then points
``text.model`` at it, so item vectors, query vectors, every model trained on them and the
server's query encoder all use the adapted encoder. The encoder is not trained through the
generative loss: that would re-embed the catalog at every step.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gensid.data.splits import PAD, Samples
from gensid.errors import ConfigError, RunError
from gensid.io import write_json
from gensid.text.encoder import model_path


def training_pairs(item_texts: list[str], samples: Samples, queries: list[str] | None = None
                   ) -> list[tuple[str, str]]:
    """(anchor, positive) text pairs: (query, target item) per search sample, else (last
    history item, target item) per sample with a history. Empty texts are skipped."""
    pairs = []
    for row, target in enumerate(samples.targets):
        if queries is not None:
            anchor = queries[row]
        else:
            last = samples.histories[row, -1]
            anchor = item_texts[last] if last != PAD else ""
        if anchor and item_texts[target]:
            pairs.append((anchor, item_texts[target]))
    return pairs


def distinct_batches(pairs: list[tuple[str, str]], batch_size: int, seed: int) -> list[list[tuple[str, str]]]:
    """Shuffled batches in which no anchor text and no positive text occurs twice: a repeated
    text would be its own in-batch negative (what sentence-transformers' NO_DUPLICATES batch
    sampler does, which needs the ``datasets`` package)."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    batches, current, seen, deferred = [], [], set(), []
    while order:
        for anchor, positive in order:
            if ("a", anchor) in seen or ("p", positive) in seen:
                deferred.append((anchor, positive))
                continue
            current.append((anchor, positive))
            seen.update({("a", anchor), ("p", positive)})
            if len(current) == batch_size:
                batches.append(current)
                current, seen = [], set()
        if current:  # a last, smaller batch; what clashed with it goes round again
            batches.append(current)
            current, seen = [], set()
        order, deferred = deferred, []
    return batches


def finetune_text_encoder(pairs: list[tuple[str, str]], base_model: str, out_dir: str | Path, epochs: int = 1,
                          lr: float = 2e-5, batch_size: int = 64, warmup: float = 0.1, seed: int = 0,
                          progress: bool = True) -> dict:
    """Train ``base_model`` on ``pairs`` and save it to ``out_dir`` (which must not exist yet).

    Returns (and writes to ``out_dir/finetune.json``) the losses per epoch and the minutes taken.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise RunError(f"{out_dir}: already exists; choose a new folder (nothing was overwritten)")
    if not pairs:
        raise ConfigError("no training pairs: the training split has no (anchor, item) texts")
    if epochs < 1 or batch_size < 2:
        raise ConfigError(f"epochs {epochs} and batch size {batch_size}: need epochs >= 1 and batch size >= 2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(seed)
    model = SentenceTransformer(model_path(base_model), device="cpu")
    model.train()
    loss_fn = MultipleNegativesRankingLoss(model)  # InfoNCE over cosine * 20, in-batch negatives
    # a one-pair batch has no negative, so no loss: its pair waits for the next epoch's shuffle
    batches = [[b for b in distinct_batches(pairs, batch_size, seed + epoch) if len(b) > 1] for epoch in range(epochs)]
    total = sum(len(b) for b in batches)
    if not total:
        raise ConfigError(f"{len(pairs)} training pairs, but no two with distinct texts to contrast")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    warm = max(1, int(warmup * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm))))
    start, losses = time.perf_counter(), []
    for epoch, epoch_batches in enumerate(batches, 1):
        running = []
        bar = tqdm(epoch_batches, desc=f"fine-tune {epoch}/{epochs}", disable=not progress)
        for batch in bar:
            anchors, positives = zip(*batch, strict=True)
            features = [model.preprocess(list(anchors)), model.preprocess(list(positives))]
            loss = loss_fn(features, labels=None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            running.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(running[-50:]):.3f}")
        losses.append(float(np.mean(running)))
    summary = {"base_model": base_model, "pairs": len(pairs), "epochs": epochs, "lr": lr, "batch_size": batch_size,
               "steps": total, "loss_per_epoch": losses, "minutes": (time.perf_counter() - start) / 60}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save(str(tmp))
    write_json(tmp / "finetune.json", summary)
    tmp.rename(out_dir)  # a killed run leaves no half-written encoder under the final name
    return summary
