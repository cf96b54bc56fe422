"""The rules that tie config sections together, checked when an :class:`ExperimentConfig` is
built; each rule's docstring is listed in docs/config.md. A broken rule raises :class:`Problem`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gensid.methods import METHODS, JointMethod

if TYPE_CHECKING:  # the sections check these rules, so they import this module
    from gensid.config.sections import ExperimentConfig

PARALLEL_HISTORY_INPUTS = ("codes", "codes+text")
JOINT = ", ".join(m.model_fields["name"].default for m in METHODS if m.family == "joint")


class Problem(ValueError):
    """A rule broken by a config: ``key`` (dotted, relative to the model that checks it) and the
    other keys involved (so a ``--set`` of any of them can be blamed)."""

    def __init__(self, key: str, message: str, *involves: str):
        super().__init__(message)
        self.key, self.involves = key, involves


RULES: list[Callable[[ExperimentConfig], None]] = []


def _rule(check: Callable[[ExperimentConfig], None]) -> Callable[[ExperimentConfig], None]:
    RULES.append(check)
    return check


@_rule
def _cold_start_needs_rec(cfg: ExperimentConfig) -> None:
    """`data.split: cold_start` needs `data.task: rec` (search splits are by time or by purchase)."""
    if cfg.data.split == "cold_start" and cfg.data.task != "rec":
        raise Problem("data.split", f"cold_start needs data.task rec, not {cfg.data.task}", "data.task")


@_rule
def _freeze_needs_joint(cfg: ExperimentConfig) -> None:
    """`train.freeze_index_epoch` > 0 needs a joint method (two-stage SIDs never move)."""
    if cfg.train.freeze_index_epoch and not cfg.method.joint:
        raise Problem("train.freeze_index_epoch", f"{cfg.train.freeze_index_epoch} needs a joint method "
                      f"({JOINT}), not {cfg.method.name} (its SIDs never move)", "method")


@_rule
def _adapter_needs_joint_rqkmeans(cfg: ExperimentConfig) -> None:
    """`quantizer.item_adapter` needs a joint method and `quantizer.method: rqkmeans`."""
    q, method = cfg.quantizer, cfg.method
    if q.item_adapter and (not method.joint or q.method != "rqkmeans"):
        raise Problem("quantizer.item_adapter", f"needs a joint method ({JOINT}) and quantizer.method rqkmeans, "
                      f"not {method.name} and {q.method} (two-stage items never move; the rqvae encoder already "
                      "learns)", "method", "quantizer.method")


@_rule
def _sids_from_needs_two_stage(cfg: ExperimentConfig) -> None:
    """`quantizer.sids_from` needs `method: two_stage` and no `train.init_from`."""
    if cfg.quantizer.sids_from and (cfg.method.name != "two_stage" or cfg.train.init_from):
        raise Problem("quantizer.sids_from", "needs method two_stage and no train.init_from (a warm "
                      f"start takes its source's item side, learned or not); here the method is "
                      f"{cfg.method.name}, train.init_from {cfg.train.init_from!r}", "method", "train.init_from")


@_rule
def _beam_covers_ks(cfg: ExperimentConfig) -> None:
    """`eval.beam_size` >= the largest of `eval.ks` (a beam returns at most beam_size items)."""
    if cfg.eval.beam_size < max(cfg.eval.ks):
        raise Problem("eval.beam_size", f"{cfg.eval.beam_size} must be >= the largest K {max(cfg.eval.ks)} "
                      "(a beam returns at most beam_size items)", "eval.ks")


@_rule
def _verify_weight_needs_joint(cfg: ExperimentConfig) -> None:
    """`eval.verify_weight` > 0 needs a joint method (only joint models have context and item vectors)."""
    if cfg.eval.verify_weight and not cfg.method.joint:
        raise Problem("eval.verify_weight", f"{cfg.eval.verify_weight}: > 0 only with a joint method ({JOINT}), "
                      f"not {cfg.method.name} (it has no context and item vectors)", "method")


@_rule
def _search_log_is_search(cfg: ExperimentConfig) -> None:
    """`data.format: search_log` needs `data.task: search`."""
    if cfg.data.format == "search_log" and cfg.data.task != "search":
        raise Problem("data.format", f"search_log needs data.task search, not {cfg.data.task}", "data.task")


@_rule
def _parallel_is_rec(cfg: ExperimentConfig) -> None:
    """`method: parallel` needs `data.task: rec` (no query token yet) and a `model.history_input` of
    `codes` or `codes+text`."""
    if cfg.method.name != "parallel":
        return
    if cfg.data.task != "rec":
        raise Problem("method", f"parallel: only data.task rec so far (no query token), not {cfg.data.task}",
                      "data.task")
    if cfg.model.history_input not in PARALLEL_HISTORY_INPUTS:
        raise Problem("model.history_input", f"{cfg.model.history_input!r}: the parallel model takes one of "
                      f"{', '.join(PARALLEL_HISTORY_INPUTS)}", "method")


@_rule
def _quantized_history_needs_joint(cfg: ExperimentConfig) -> None:
    """A `model.history_input` of `quantized` or `quantized+text` needs a joint method (only a joint
    model holds the quantizer)."""
    m = cfg.model
    if m.history_input.startswith("quantized") and not cfg.method.joint:
        raise Problem("model.history_input", f"{m.history_input} needs a joint method ({JOINT}), not "
                      f"{cfg.method.name}", "method")


@_rule
def _search_has_one_token_per_item(cfg: ExperimentConfig) -> None:
    """`data.task: search` needs one token per history item (not `model.history_input: code_tokens`)."""
    if cfg.data.task == "search" and cfg.model.history_input == "code_tokens":
        raise Problem("model.history_input", "code_tokens cannot take a query token (data.task search): use "
                      "one token per history item", "data.task")


@_rule
def _tied_heads_match_the_latent(cfg: ExperimentConfig) -> None:
    """Heads tied to the codebooks (DGI's `weight_sharing`) with `quantizer.method: rqvae` need
    `quantizer.latent_dim` = `model.d_model` (hidden states are scored against the codebooks)."""
    q, m = cfg.quantizer, cfg.model
    if isinstance(cfg.method, JointMethod) and cfg.method.tie_heads and q.method == "rqvae" \
            and q.latent_dim != m.d_model:
        raise Problem("method.weight_sharing", f"scores hidden states against the codebooks: quantizer.latent_dim "
                      f"({q.latent_dim}) must equal model.d_model ({m.d_model})", "quantizer.latent_dim",
                      "model.d_model")
