"""Fine-tuning the sentence encoder: training pairs, duplicate-free batches, a real (tiny) run."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from gensid.data.splits import PAD, Samples
from gensid.errors import RunError
from gensid.text import TextEncoder, embed_texts
from gensid.text.finetune import distinct_batches, finetune_text_encoder, training_pairs

TEXTS = ["red lipstick", "nail polish remover", "shampoo for dry hair", "", "sunscreen spf 50"]


def test_training_pairs_use_the_query_or_the_last_history_item():
    histories = np.array([[PAD, PAD], [0, 1], [PAD, 2], [1, 4]])
    samples = Samples(histories, np.array([1, 2, 4, 3]), np.arange(4))
    # recommendation: the previous item's text; no history or an empty target text gives no pair
    assert training_pairs(TEXTS, samples) == [("nail polish remover", "shampoo for dry hair"),
                                              ("shampoo for dry hair", "sunscreen spf 50")]
    queries = ["lipstick", "hair", "sun cream", "anything"]
    assert training_pairs(TEXTS, samples, queries) == [
        ("lipstick", "nail polish remover"), ("hair", "shampoo for dry hair"), ("sun cream", "sunscreen spf 50")]


def test_distinct_batches_cover_every_pair_once_without_repeated_texts():
    rng = np.random.default_rng(0)
    # popular queries and items repeat, as in product search
    pairs = [(f"q{rng.zipf(1.5) % 40}", f"item {rng.zipf(1.3) % 60}") for _ in range(500)]
    batches = distinct_batches(pairs, 16, seed=0)
    assert Counter(p for b in batches for p in b) == Counter(pairs)
    for batch in batches:
        anchors, positives = zip(*batch, strict=True)
        assert len(set(anchors)) == len(anchors) and len(set(positives)) == len(positives)
        assert len(batch) <= 16
    assert batches != distinct_batches(pairs, 16, seed=1)  # the seed reshuffles


PAIRS = [(f"{color} {thing}", f"{brand} {thing} in {color}, makeup")
         for color in ("crimson", "teal", "ivory", "amber")
         for thing, brand in (("eyeliner", "Acme"), ("nail lacquer", "Lumo"), ("blush", "Vero"), ("mascara", "Orin"))]


def test_finetuning_pulls_training_pairs_together_and_keys_the_cache_on_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSID_CACHE", str(tmp_path / "cache"))
    anchors, positives = [a for a, _ in PAIRS], [p for _, p in PAIRS]

    def pair_cosine(model: str) -> float:
        encoder = TextEncoder(model)
        a, p = encoder.encode(anchors, progress=False), encoder.encode(positives, progress=False)
        return float((a * p).sum(1).mean())

    out = tmp_path / "encoder"
    summary = finetune_text_encoder(PAIRS, "all-MiniLM-L6-v2", out, epochs=3, lr=1e-4, batch_size=8, progress=False)
    assert summary["steps"] == 6 and (out / "finetune.json").exists()
    assert summary["loss_per_epoch"][-1] < summary["loss_per_epoch"][0]
    assert pair_cosine(str(out)) > pair_cosine("all-MiniLM-L6-v2") + 0.02
    # the fine-tuned folder works as text.model, and its vectors are cached under its own key
    tuned = embed_texts(anchors, str(out), progress=False)
    assert not np.allclose(tuned, embed_texts(anchors, "all-MiniLM-L6-v2", progress=False), atol=1e-3)
    np.testing.assert_allclose(embed_texts(anchors, str(out), progress=False), tuned)
    # retrained into the same folder (other weights), the cache must not hand back the old vectors
    weights = next(out.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + bytes(8))
    assert len(list((tmp_path / "cache" / "embeddings").glob("encoder-*.npy"))) == 1
    embed_texts(anchors, str(out), progress=False)
    assert len(list((tmp_path / "cache" / "embeddings").glob("encoder-*.npy"))) == 2
    with pytest.raises(RunError, match="already exists"):
        finetune_text_encoder(PAIRS, "all-MiniLM-L6-v2", out, progress=False)


def test_finetune_text_command_on_movielens(tmp_path):
    out = tmp_path / "ml-encoder"
    command = [sys.executable, "-m", "gensid.cli", "finetune-text", "configs/ml100k.yaml", "--out", str(out),
               "--set", "data.max_users=50", "--max-pairs", "48", "--batch-size", "16", "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    # 48 pairs in batches of 16 take 3 steps, or more where a repeated text had to wait for another batch
    steps = int(done.stdout.split(" pairs, ")[1].split(" steps")[0])
    assert done.stdout.startswith("48 pairs") and steps >= 3 and f"--set text.model={out}\n" in done.stdout
    vectors = TextEncoder(str(out)).encode(["Toy Story (1995)"], progress=False)
    assert vectors.shape == (1, 384)
