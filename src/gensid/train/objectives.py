"""What a training step optimises: one objective per strategy.

- :class:`NextTokenObjective` (two-stage): SIDs are fixed; next-code cross-entropy.
- :class:`ParallelObjective` (parallel): fixed long SIDs; the multi-token loss at every history
  position of a training window (each position predicts all digits of the item after it).
- :class:`SASRecObjective` (the SASRec baseline): item ids, cross-entropy over the catalog at every
  history position of a training window, as the parallel objective trains.
- :class:`DenseObjective` (the dense dual encoder baseline): in-batch InfoNCE of a sample's query and
  history against its target's text vector.
- :class:`JointObjective` (the joint methods: STE, DGI, DIGER): every step re-tokenizes the
  batch's items with the model's tokenizer under the method's assignment, at the method's
  temperature for that point of training; the hard codes are the targets, the assignment's
  vectors are the decoder's teacher-forcing inputs (and the history tokens with
  ``history_input: quantized*``), and the method's weighted loss terms are added. With a
  disambiguation position, its codes come from the batch (the item features of the last
  index refresh).

An objective returns named loss terms (``total`` is what is minimised) and says which
parameters learn at which rate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gensid.baselines.dense import DenseDualEncoder, context_inputs
from gensid.baselines.sasrec import SASRec, align_histories
from gensid.config.sections import ExperimentConfig
from gensid.data.splits import PAD
from gensid.methods import JointMethod
from gensid.model.parallel import ParallelSIDRecommender
from gensid.model.recommender import GenerativeRecommender
from gensid.quantize.assign import ARGMAX, Assignment
from gensid.quantize.sids import SemanticIDs
from gensid.train.batches import Batch, ItemFeatures


class NextTokenObjective:
    def __init__(self, cfg: ExperimentConfig):
        self.label_smoothing = cfg.train.label_smoothing

    def __call__(self, model: GenerativeRecommender, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        logits = model(batch.history_codes, batch.history_mask, batch.target_codes, batch.history_text, batch.query)
        loss = model.loss(logits, batch.target_codes, self.label_smoothing)
        return {"next_token": loss, "total": loss}

    def param_groups(self, model: GenerativeRecommender) -> list[dict]:
        return [{"params": list(model.parameters())}]


class ParallelObjective:
    """Needs window samples (:func:`gensid.data.splits.sequence_windows`): every history position
    is a prediction, so a target must not also appear as a later sample's target. ``parallel.loss``
    picks the terms; the item softmax scores against every item of ``candidates`` [S] (default:
    every item of ``items``) or ``parallel.item_negatives`` of them drawn uniformly. A
    cold-start run's candidates are the trained items only: a new item is no negative either, so
    nothing moves its item vector (``parallel.item_ids``), which stays zero, as for an item added
    while serving."""

    def __init__(self, cfg: ExperimentConfig, items: ItemFeatures, candidates: torch.Tensor | None = None):
        self.loss, self.negatives = cfg.parallel.loss, cfg.parallel.item_negatives
        self.item_codes, self.item_text = items.codes, items.text
        self.candidates = torch.arange(len(items.codes)) if candidates is None else candidates

    def __call__(self, model: ParallelSIDRecommender, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        hidden = model.encode(batch.history_codes, batch.history_mask, batch.history_text,
                              batch.history_items)  # [B, H, d]
        real = batch.history_mask
        # position t predicts the item after it: the next history item, or the target after the last
        next_items = torch.cat([batch.history_items[:, 1:], batch.targets[:, None]], 1)[real]  # [R]
        next_codes = torch.cat([batch.history_codes[:, 1:], batch.target_codes[:, None]], 1)[real]  # [R, m]
        hidden = hidden[real]
        # the shared head's item softmax needs no digit logits: skip the [R, d] x [d, m*K] matmul
        needs_digits = self.loss != "items" or model.head != "shared"
        logits = model.digit_logits(hidden) if needs_digits else None  # [R, m, K]
        terms = {}
        if self.loss in ("digits", "both"):
            terms["next_digits"] = model.loss(logits, next_codes)
        if self.loss in ("items", "both"):
            n = len(self.candidates)
            candidates = self.candidates[torch.randperm(n)[: self.negatives]] if 0 < self.negatives < n \
                else self.candidates
            terms["item_softmax"] = model.item_loss(hidden, logits, next_items, next_codes, candidates,
                                                    self.item_codes[candidates], self.item_text)
        terms["total"] = sum(terms.values())
        return terms

    def param_groups(self, model: ParallelSIDRecommender) -> list[dict]:
        return [{"params": list(model.parameters())}]


class SASRecObjective:
    """Needs window samples (:func:`gensid.data.splits.sequence_windows`), as :class:`ParallelObjective`;
    its batches' item features are the item ids (``ItemFeatures(codes=ids [N, 1])``), which it does not
    read. ``absent`` [num_items] bool: items that are no candidates of the softmax (a cold-start split's
    new items did not exist yet), so nothing moves their embeddings."""

    def __init__(self, absent: torch.Tensor):
        self.absent = absent

    def __call__(self, model: SASRec, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        real = batch.history_mask
        history = batch.history_items.masked_fill(~real, PAD)  # [B, H] left-padded
        next_items = torch.cat([history[:, 1:], batch.targets[:, None]], 1)[real]  # [R], oldest first per row
        aligned, _ = align_histories(history.numpy(), history.shape[1])  # right-aligned, the model's layout
        aligned = torch.from_numpy(aligned)
        hidden = model(aligned)[aligned != PAD]  # [R, D], the same row-major order as next_items
        logits = model.logits(hidden).masked_fill(self.absent, -torch.inf)
        loss = F.cross_entropy(logits, next_items)
        return {"next_item": loss, "total": loss}

    def param_groups(self, model: SASRec) -> list[dict]:
        return [{"params": list(model.parameters())}]


class DenseObjective:
    """Needs the training samples' query vectors in the batches (the Trainer's ``queries``; zeros for
    recommendation, where the history alone is the context); ``item_text`` [num_items, T]: the items'
    frozen text vectors, the history mean's and the targets' inputs. Its batches' item features are
    the item ids, as :class:`SASRecObjective`'s, which it does not read."""

    def __init__(self, item_text: torch.Tensor):
        self.item_text = item_text

    def __call__(self, model: DenseDualEncoder, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        history = batch.history_items.masked_fill(~batch.history_mask, PAD)  # [B, H]
        context = context_inputs(batch.query, history, self.item_text)  # [B, 2T]
        loss = model.loss(context, self.item_text[batch.targets], batch.targets)
        return {"in_batch": loss, "total": loss}

    def param_groups(self, model: DenseDualEncoder) -> list[dict]:
        return [{"params": list(model.parameters())}]


class JointObjective:
    """``method``: the joint method (its assignment, temperature schedule and loss weights);
    ``text`` [N, T]: every item's frozen text vector, the tokenizer's input."""

    def __init__(self, cfg: ExperimentConfig, text: torch.Tensor):
        self.cfg, self.text = cfg, text
        self.method: JointMethod = cfg.method
        self.weights = self.method.loss_weights()
        self.frozen = False

    @property
    def assignment(self) -> Assignment:
        """How the batch's items get codes: the method's, or the index's own argmax once frozen."""
        return ARGMAX if self.frozen else self.method.assignment()

    def freeze_item_side(self, model: GenerativeRecommender) -> None:
        """Stop the index learning (``train.freeze_index_epoch``): argmax codes from now on, and no
        gradient reaches the tokenizer (nor tied heads, which are its codebooks), so every later
        refresh rebuilds the same SIDs. Idempotent, so a resumed run can repeat it."""
        self.frozen = True
        model.tokenizer.requires_grad_(False)

    def __call__(self, model: GenerativeRecommender, batch: Batch, progress: float) -> dict[str, torch.Tensor]:
        tokenizer, weights = model.tokenizer, self.weights
        quantizer = tokenizer.quantizer
        b, h = batch.history_items.shape
        items, where = torch.unique(torch.cat([batch.history_items.reshape(-1), batch.targets]), return_inverse=True)
        x = self.text[items]
        z_base = tokenizer.encoder(x)  # [U, d]
        out = quantizer(z_base, self.assignment, self.method.tau(progress))
        hist, target = where[:-b].view(b, h), where[-b:]
        target_codes, history_codes = out.codes[target], out.codes[hist]
        if model.num_levels > quantizer.num_levels:  # the disambiguation code of the last refresh
            target_codes = torch.cat([target_codes, batch.target_codes[:, -1:]], 1)
            history_codes = torch.cat([history_codes, batch.history_codes[..., -1:]], -1)
        memory = model.encode(history_codes, batch.history_mask, batch.history_text, out.quantized[hist],
                              batch.query)
        prefix = target_codes[:, :-1]  # teacher forcing: the codes (and vectors) of every level but the last
        logits = model.code_logits(memory, batch.history_mask, prefix, out.level_vectors[target][:, : prefix.shape[1]])
        terms = {"next_token": model.loss(logits, target_codes, self.cfg.train.label_smoothing)}
        if weights["global_cosine"]:
            terms["global_cosine"] = (1 - F.cosine_similarity(quantizer.prepare(z_base), out.quantized, -1)).mean()
        if weights["codebook"]:
            terms["codebook"] = out.loss
        if weights["rqvae_reconstruction"]:
            terms["rqvae_reconstruction"] = tokenizer.reconstruct(out.quantized, x)[1]
        if weights["infonce"]:
            context = model.context(memory, model.memory_mask(batch.history_mask))
            terms["infonce"] = self.infonce(context, z_base[target], batch.targets)
        if weights["diversity"]:
            terms["diversity"] = sum(1 - entropy(lg.softmax(-1).mean(0)) / math.log(lg.shape[-1])
                                     for lg in out.logits) / len(out.logits)
        if "sdud" in weights:
            terms["sdud"] = quantizer.sdud_loss(terms["next_token"])
        terms["total"] = sum(weights[name] * value for name, value in terms.items())
        return terms

    def infonce(self, context: torch.Tensor, item: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """In-batch InfoNCE [B, d] x [B, d]; other rows with the same target are not negatives."""
        scores = F.normalize(context, dim=-1) @ F.normalize(item, dim=-1).T / INFONCE_TEMPERATURE
        same = targets.unsqueeze(0) == targets.unsqueeze(1)
        scores = scores.masked_fill(same & ~torch.eye(len(targets), dtype=torch.bool), float("-inf"))
        return F.cross_entropy(scores, torch.arange(len(targets)))

    def param_groups(self, model: GenerativeRecommender) -> list[dict]:
        """The item side (tokenizer) at ``train.quantizer_lr``, the recommender at ``train.lr``."""
        item_side = {id(p) for p in model.tokenizer.parameters()}
        rest = [p for p in model.parameters() if id(p) not in item_side]
        return [{"params": list(model.tokenizer.parameters()), "lr": self.cfg.train.quantizer_lr},
                {"params": rest, "lr": self.cfg.train.lr}]


INFONCE_TEMPERATURE = 0.05


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp(min=1e-12).log()).sum(-1)


@torch.no_grad()
def item_snapshot(model: GenerativeRecommender, text: torch.Tensor, keep_text: bool) -> ItemFeatures:
    """The deterministic item side of a joint model: codes [N, L], quantized and z_base [N, d].
    With a disambiguation position the codes of ``text``'s items get TIGER's disambiguation
    code (item order within a collision group; beyond the position's vocabulary the last code)."""
    was_training = model.training
    model.eval()
    z_base = torch.cat([model.tokenizer.encoder(chunk) for chunk in text.split(8192)])
    quantizer = model.tokenizer.quantizer
    codes = quantizer.encode(z_base)
    quantized = quantizer.decode(codes)
    model.train(was_training)
    if model.num_levels > quantizer.num_levels:
        codes = torch.from_numpy(SemanticIDs.from_codes(codes.numpy(), quantizer.codebook_sizes).codes)
        codes[:, -1].clamp_(max=model.code_sizes[-1] - 1)
    return ItemFeatures(codes, text if keep_text else None, quantized, z_base)
