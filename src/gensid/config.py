"""Experiment configuration: pydantic models loaded from YAML, overridable by ``--set``.

One YAML per experiment lives in ``configs/``; every run writes its resolved config next to its
outputs as ``config.yaml``. A config may start from another (``extends: base.yaml``, relative to
the file; deep-merged, the child wins). Everything is checked when the config is loaded: unknown
keys, types, choices, and the rules that tie sections together (:data:`RULES`); a problem raises
:class:`~gensid.errors.ConfigError` whose one-line message reads
``<file or --set KEY=VALUE>: <dotted.key>: <what is wrong>``.

``python -m gensid.config docs/config.md`` writes the reference of every field (docs/config.md).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gensid.errors import ConfigError
from gensid.fields import Count, Float
from gensid.methods import METHODS, NAMES, JointMethod, MethodConfig, TwoStage

# the choices of every choice field (the modules that consume them check the same sets)
DataFormat = Literal["auto", "letter", "recbole", "csv", "search_log"]
Task = Literal["rec", "search"]
Split = Literal["leave_one_out", "cold_start"]
QuantizerMethod = Literal["rqkmeans", "rqvae"]
Geometry = Literal["euclidean", "cosine"]
HistoryInput = Literal["codes", "codes+text", "quantized", "quantized+text", "code_tokens"]
ParallelHead = Literal["digits", "shared"]
ParallelLoss = Literal["digits", "items", "both"]
TASKS: tuple[str, ...] = get_args(Task)
PARALLEL_HISTORY_INPUTS = ("codes", "codes+text")
JOINT = ", ".join(m.model_fields["name"].default for m in METHODS if m.family == "joint")


class Section(BaseModel):
    """A config section: unknown keys are errors, types are strict (no ``"3"`` for 3, no 1 for
    true), values are checked again when assigned (``cfg.data.source = ...``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class DataConfig(Section):
    """Where the interactions and item texts come from, and how they become samples."""

    source: str = Field("movielens-100k", description="`movielens-100k` or a path to a data folder / file")
    format: DataFormat = Field("auto", description="`search_log`: a log of (user, timestamp, query, item); "
                                                   "`auto` tells letter, recbole and csv apart by the files")
    task: Task = Field("rec", description="`rec`: the next item from the history; "
                                          "`search`: query + history -> item")
    query_field: str = Field("categories", description="search on purchase data: the item field whose text "
                                                       "is the query")
    max_history: int = Field(20, ge=1, description="the newest items of a history the model sees")
    text_fields: list[str] = Field(default_factory=lambda: ["title", "brand", "categories"],
                                   description="item fields joined into the item text that is embedded")
    max_users: int = Field(0, ge=0, description=">0: keep only the first N users (quick runs and tests)")
    split: Split = Field("leave_one_out", description="task rec: `leave_one_out` (each user's last item is the "
                         "test target, the one before it the validation target); `cold_start`: the same targets, "
                         "but the newest `cold_share` of the items never reach training, and the tokenizer is "
                         "fitted without them (README, Data formats)")
    cold_share: Float = Field(0.15, gt=0, lt=1, description="split cold_start: the share of the items, the newest "
                              "by first interaction, that training never sees")


class TextConfig(Section):
    """The sentence encoder that turns item (and query) texts into vectors."""

    model: str = Field("all-MiniLM-L6-v2", description="`all-MiniLM-L6-v2` (shipped as a wheel) or a local "
                                                       "sentence-transformers folder, e.g. from "
                                                       "`gensid finetune-text`")
    batch_size: int = Field(128, ge=1, description="texts per encoder call")


class QuantizerConfig(Section):
    """The tokenizer: item text vectors -> semantic IDs (a residual quantizer; how a joint method
    assigns codes while the index learns is the method's)."""

    method: QuantizerMethod = Field("rqkmeans", description="`rqkmeans`: residual k-means on the text "
                                                            "vectors; `rqvae`: an MLP encoder before it")
    codebook_sizes: list[Count] = Field(default_factory=lambda: [256, 256, 256], min_length=1,
                                        description="codes per level, coarse to fine")
    geometry: Geometry = Field("euclidean", description="`cosine`: L2-normalised inputs and codebooks")
    euclidean_scale: Float = Field(1.0, gt=0, description="euclidean: scores are -scale * squared distance; "
                                                          "the codes stay, soft assignments sharpen")
    latent_dim: int = Field(64, ge=1, description="rqvae only: size of the quantized latent")
    disambiguation: bool = Field(False, description="joint: append TIGER's disambiguation code, recomputed "
                                                    "from the current assignment at every index refresh "
                                                    "(two-stage SIDs always have it)")
    hidden_dims: list[Count] = Field(default_factory=lambda: [256, 128],
                                     description="rqvae encoder MLP (`[]`: one linear layer)")
    epochs: int = Field(200, ge=0, description="rqvae only: reconstruction pretraining epochs")
    lr: Float = Field(1e-3, ge=0, description="rqvae pretraining learning rate")
    beta: Float = Field(0.25, ge=0, description="commitment weight")
    batch_size: int = Field(1024, ge=1, description="rqvae pretraining batch size")
    hard_residual: bool = Field(False, description="joint: the next level's residual subtracts the "
                                                   "deterministic code's codebook row instead of the "
                                                   "assignment's (soft / noisy) vector, so the training "
                                                   "targets are the index's codes")
    item_adapter: bool = Field(False, description="joint with rqkmeans: a zero-initialised residual linear "
                                                  "map on the item text vectors, so the losses can move the "
                                                  "items themselves and not only the codebooks (rqkmeans has "
                                                  "no encoder; rqvae's encoder already learns)")
    sids_from: str = Field("", description="two-stage: the tokenizer and SIDs of a finished joint run (its "
                                           "final, learned index) instead of fitting them on the text "
                                           "vectors; the decoder then trains from scratch on that index")


class ParallelConfig(Section):
    """method parallel (RPG): long unordered SIDs from product quantization, all digits
    predicted at once, every catalog item scored exactly."""

    digits: int = Field(32, ge=1, description="digits per item; must divide the text vector's dimensions")
    codebook_size: int = Field(256, ge=2, description="codes per digit (a power of two)")
    opq: bool = Field(True, description="learn a rotation before product quantization (OPQ); false: plain PQ")
    whiten: bool = Field(False, description="PCA-whiten the text vectors first")
    head: ParallelHead = Field("digits", description="`digits`: RPG's one residual head per digit, digit logits "
                               "= cos(head state, digit embedding) / temperature; `shared`: the hidden state "
                               "itself, digit logits = its dot product with each digit's embeddings, so an "
                               "item's score is its dot product with the mean of its digit embeddings (its "
                               "history token, tied)")
    temperature: Float = Field(0.07, gt=0, description="head `digits`: the cosine logits' temperature")
    loss: ParallelLoss = Field("digits", description="`digits`: RPG's multi-token loss (mean over digits of "
                               "each digit's cross-entropy); `items`: a softmax over items of the item score "
                               "(the mean of its digit logits, the score that ranks); `both`: their sum")
    item_negatives: int = Field(0, ge=0, description="loss `items`/`both`: 0 scores the target against every "
                                "catalog item; > 0 against this many uniformly drawn items")
    item_ids: bool = Field(False, description="head `shared`: each trained item also gets a free vector "
                           "(zero at the start) added to the mean of its digit embeddings, in its history "
                           "token and its score; an item added after training has none and is scored by its "
                           "digits alone. Off: the digits are all an item is (a pure semantic-ID model)")
    embedding_dropout: Float = Field(0.5, ge=0, lt=1, description="on the history tokens")
    attention_dropout: Float = Field(0.5, ge=0, lt=1, description="on the attention weights")

    @model_validator(mode="after")
    def _power_of_two(self) -> ParallelConfig:
        if self.codebook_size & (self.codebook_size - 1):
            raise Problem("codebook_size", f"{self.codebook_size} is not a power of two, e.g. 256")
        if self.item_ids and self.head != "shared":
            raise Problem("item_ids", "needs parallel.head shared (RPG's digit heads score digits only)")
        return self


class ModelConfig(Section):
    """The generative recommender (a Transformer encoder over the history, a decoder over codes)."""

    d_model: int = Field(128, ge=1, description="Transformer width")
    n_heads: int = Field(4, ge=1, description="attention heads (must divide d_model)")
    encoder_layers: int = Field(4, ge=1, description="history encoder layers (parallel: the only stack)")
    decoder_layers: int = Field(4, ge=1, description="code decoder layers")
    d_ff: int = Field(512, ge=1, description="feed-forward width")
    dropout: Float = Field(0.1, ge=0, lt=1, description="dropout in the Transformer layers")
    history_input: HistoryInput = Field("codes", description="one token per history item: `codes`, "
                                                             "`codes+text`, `quantized`, `quantized+text` "
                                                             "(the item's quantized vector, joint methods "
                                                             "only); or "
                                                             "`code_tokens` (one token per code, TIGER's input)")
    embedding_init_std: Float = Field(0.02, ge=0, description="code embeddings ~ N(0, std); 0 keeps torch's "
                                                              "N(0, 1)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise Problem("d_model", f"{self.d_model} must be a multiple of model.n_heads ({self.n_heads})",
                          "n_heads")
        return self


class TrainConfig(Section):
    """What learns, for how long, on which schedule."""

    epochs: int = Field(20, ge=1, description="epochs the schedules span")
    batch_size: int = Field(256, ge=1, description="training samples per step")
    lr: Float = Field(1e-3, ge=0, description="peak learning rate (warmup, then linear decay)")
    quantizer_lr: Float = Field(1e-3, ge=0, description="joint methods: item encoder + quantizer learning rate")
    weight_decay: Float = Field(0.01, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(200, ge=0, description="linear warmup steps")
    label_smoothing: Float = Field(0.0, ge=0, lt=1, description="of the next-token cross-entropy")
    seed: int = Field(0, ge=0, description="one seed makes a CPU run repeat exactly")
    max_minutes: Float = Field(0.0, ge=0, description=">0: stop training after this wall time")
    stop_epoch: int = Field(0, ge=0, description=">0: stop after this many epochs while the learning-rate "
                                                 "(and temperature) schedules still span `epochs`: repeats "
                                                 "a time-budgeted run epoch for epoch on a slower or busier "
                                                 "machine")
    init_from: str = Field("", description="a finished run to start from: its item side (text vectors, "
                                           "tokenizer, SIDs) and weights; e.g. joint training on top of a "
                                           "trained two-stage run")
    freeze_index_epoch: int = Field(0, ge=0, description="joint methods: >0 freezes the item side after this many "
                                                         "epochs (argmax codes, no gradient into the "
                                                         "tokenizer); the epochs left train the recommender "
                                                         "on fixed SIDs")
    bf16: bool = Field(False, description="autocast matmuls to bfloat16 on CPU")
    threads: int = Field(0, ge=0, description=">0: torch threads (1 avoids oversubscription when jobs "
                                              "share the cores)")
    eval_every: int = Field(1, ge=1, description="validate every N epochs (keep the best checkpoint)")
    patience: int = Field(0, ge=0, description=">0: stop after N validations without improvement")


class EvalConfig(Section):
    """Ranking and metrics (full catalog, per item)."""

    beam_size: int = Field(20, ge=1, description="beam width, i.e. items ranked per user (parallel: the "
                                                 "top items kept from exact scoring)")
    ks: list[Count] = Field(default_factory=lambda: [1, 5, 10, 20], min_length=1,
                            description="cut-offs of recall@K, ndcg@K, hit@K")
    batch_size: int = Field(256, ge=1, description="users per ranking batch")
    max_users: int = Field(0, ge=0, description=">0: validate during training on a fixed random subset of N "
                                                "users (final valid/test use every user)")
    verify_weight: Float = Field(0.0, ge=0, description="joint methods' geometric verification: items are ranked "
                                                        "by beam log-probability plus verify_weight x "
                                                        "cosine(context vector, item vector). 0 is DGI's rule "
                                                        "(the cosine only orders items that share a SID); "
                                                        "> 0 lets the cosine move items between SIDs")


class ServeConfig(Section):
    """Answers to a user (``gensid recommend``, ``gensid serve``); evaluation ignores it."""

    exclude_seen: bool = Field(False, description="drop the items of the given history from an answer when "
                                                  "the request does not say (evaluation keeps them: the "
                                                  "published protocol)")


class ExperimentConfig(Section):
    """One experiment: every section, each with its defaults."""

    name: str = Field("default", description="the run's name; `gensid train` writes to `runs/<name>` unless "
                                             "given `--run-dir`")
    method: MethodConfig = Field(default_factory=TwoStage, description="the training method: "
                                 f"{', '.join(f'`{n}`' for n in NAMES)}; a name (`method: dgi`) or a mapping of "
                                 "its settings (`{name: dgi, weight_sharing: false}`), see below")
    data: DataConfig = Field(default_factory=DataConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    quantizer: QuantizerConfig = Field(default_factory=QuantizerConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @model_validator(mode="after")
    def _rules(self) -> ExperimentConfig:
        for rule in RULES:
            rule(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


class Problem(ValueError):
    """A rule broken by a config: ``key`` (dotted, relative to the model that checks it) and the
    other keys involved (so a ``--set`` of any of them can be blamed)."""

    def __init__(self, key: str, message: str, *involves: str):
        super().__init__(message)
        self.key, self.involves = key, involves


# ---------------------------------------------------------------------------------------------
# rules across sections, checked at load; each docstring is listed in docs/config.md

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


# ---------------------------------------------------------------------------------------------
# loading: files (with extends), overrides, and where each value came from


class _Sources:
    """Where each value of the raw config came from (a file or a ``--set``), so an error names it.
    Later sources rank higher: a rule broken by several keys blames the latest change."""

    def __init__(self, fallback: str):
        self.fallback = fallback
        self.origins: dict[tuple, tuple[int, str]] = {}
        self.rank = 0

    def record(self, value: Any, label: str, at: tuple = ()) -> None:
        self.rank += 1
        self._record(value, (self.rank, label), at)

    def _record(self, value: Any, origin: tuple[int, str], at: tuple) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                self._record(item, origin, (*at, key))
            return
        for path in [p for p in self.origins if p[: len(at)] == at]:  # replaced wholesale
            del self.origins[path]
        self.origins[at] = origin

    def blame(self, locs: list[tuple]) -> str:
        found = [origin for loc in locs for path, origin in self.origins.items()
                 if path[: len(loc)] == loc or loc[: len(path)] == path]
        return max(found)[1] if found else self.fallback


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _field_at(loc: tuple, method: str | None = None) -> tuple[type[BaseModel] | None, Any]:
    """(the model holding the field at ``loc``, that field's annotation); (model, None) if the last
    part is not one of its fields. ``method``: the method whose fields ``method.*`` are."""
    model: type[BaseModel] | None = ExperimentConfig
    if method is not None and loc[:1] == ("method",) and len(loc) > 1:
        model, loc = next(m for m in METHODS if m.model_fields["name"].default == method), loc[1:]
    annotation: Any = None
    for i, part in enumerate(loc):
        if model is None or not isinstance(part, str):
            return None, None
        field = model.model_fields.get(part)
        if field is None:
            return (model, None) if i == len(loc) - 1 else (None, None)
        annotation = field.annotation
        if i < len(loc) - 1:
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model, annotation


def _hint(word: Any, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a misspelled key or value, else ``""``."""
    if not isinstance(word, str):
        return ""
    near = difflib.get_close_matches(word, choices, n=1) or sorted(
        (c for c in choices if min(len(c), len(word)) >= 2 and (word.startswith(c) or c.startswith(word))),
        key=lambda c: abs(len(c) - len(word)))
    return f" (did you mean {near[0]!r}?)" if near else ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _choice(value: Any) -> str:
    return "null" if value is None else str(value)


def _what(error: dict) -> tuple[tuple, str, tuple]:
    """(loc of the key at fault, what is wrong, locs of the other keys involved) of a pydantic error."""
    loc, kind, value, ctx = tuple(error["loc"]), error["type"], error.get("input"), error.get("ctx") or {}
    method = None
    if loc[:1] == ("method",) and len(loc) > 1:  # pydantic puts the method's name after `method`
        method, loc = loc[1], ("method", *loc[2:])
    if kind == "union_tag_invalid":
        tag = ctx.get("tag")
        return loc, f"{_shown(tag)} is not allowed{_hint(tag, list(NAMES))}; expected one of {', '.join(NAMES)}", ()
    if kind == "value_error" and isinstance(ctx.get("error"), Problem):
        problem = ctx["error"]
        key = (*loc, *problem.key.split("."))
        return key, str(problem), tuple((*loc, *k.split(".")) for k in problem.involves)
    if kind == "extra_forbidden":
        model, _ = _field_at(loc, method)
        names = list(model.model_fields) if model is not None else []
        what = "unknown section" if len(loc) == 1 else "unknown field"
        return loc, f"{what}{_hint(loc[-1], names)}; expected one of {', '.join(names)}", ()
    if kind == "literal_error":
        _, annotation = _field_at(loc, method)
        choices = [_choice(c) for c in get_args(annotation)] if get_origin(annotation) is Literal else []
        expected = ", ".join(choices) if choices else ctx.get("expected", "")
        return loc, f"{_shown(value)} is not allowed{_hint(value, choices)}; expected one of {expected}", ()
    expected = {
        "int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
        "string_type": "a string", "list_type": "a list, e.g. [1, 2]",
        "model_type": "a mapping of fields (a section)", "dict_type": "a mapping",
    }.get(kind)
    if expected:
        return loc, f"expected {expected}, got {_shown(value)}", ()
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return loc, f"expected a value {bounds[kind]} {limit}, got {_shown(value)}", ()
    if kind == "too_short":
        return loc, f"expected at least {ctx.get('min_length')} item(s), got {_shown(value)}", ()
    message = error["msg"]
    return loc, f"{message[:1].lower()}{message[1:]}, got {_shown(value)}", ()


def _explain(exc: ValidationError, sources: _Sources) -> str:
    """One line: ``<source>: <dotted.key>: <what is wrong>`` for the first problem."""
    errors = exc.errors(include_url=False)
    loc, what, involves = _what(errors[0])
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    line = f"{sources.blame([loc, *involves])}: {_dotted(loc)}: {what}{more}"
    return " ".join(line.split())


def _parse_override(assignment: str) -> tuple[list[str], Any]:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE, e.g. --set train.lr=1e-3")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment}: {key.strip()!r} is not a dotted key, e.g. train.lr")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment}: {key.strip()}: the value is not valid YAML "
                          f"({' '.join(str(getattr(exc, 'problem', exc)).split())})") from None
    return parts, value


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    parts, value = _parse_override(assignment)
    _set(raw, parts, value, assignment)


def _set(raw: dict[str, Any], parts: list[str], value: Any, assignment: str) -> None:
    _expand_method(raw)
    node = raw
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment}: {'.'.join(parts[: i + 1])}: not a section (it holds "
                              f"{_shown(node)})")
    node[parts[-1]] = value


def _expand_method(raw: dict[str, Any]) -> dict[str, Any]:
    """``method: dgi`` as ``method: {name: dgi}``, so that files and overrides can change one of its
    fields (``--set method.weight_sharing=false``, or ``method: {weight_sharing: false}`` in a file
    that extends another)."""
    if isinstance(raw.get("method"), str):
        raw["method"] = {"name": raw["method"]}
    return raw


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(" ".join(f"{path}: {where}invalid YAML ({problem})".split())) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (name:, data:, train:, ...) at the top, "
                          f"got {type(raw).__name__}")
    return raw


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def _read_config(path: Path, sources: _Sources, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its ``extends`` chain resolved (base first, each file over it)."""
    raw = _expand_method(_read_yaml(path))
    base_name = raw.pop("extends", None)
    merged: dict[str, Any] = {}
    if base_name is not None:
        if not isinstance(base_name, str) or not base_name.strip():
            raise ConfigError(f"{path}: extends: expected a config file name (relative to this file), got "
                              f"{_shown(base_name)}")
        base = path.parent / base_name
        seen = [*chain, path]
        if base.resolve() in [p.resolve() for p in seen]:
            cycle = " -> ".join(str(p) for p in [*seen, base])
            raise ConfigError(f"{path}: extends: a cycle: {cycle}")
        if not base.is_file():
            raise ConfigError(f"{path}: extends: {base}: config file not found")
        merged = _read_config(base, sources, (*chain, path))
    sources.record(raw, str(path))
    return _merge(merged, raw)


# ---------------------------------------------------------------------------------------------
# configs written before methods were objects (run folders' config.yaml up to gensid 0.1.0)

# the flags a method replaced, by section: a config with any of them and no `method` is translated
FLAGS = {"train": ("strategy",), "quantizer": ("assignment", "decay", "frqud_ratio", "tau_start", "tau_end",
                                               "dril_temperature"),
         "model": ("logits", "tie_heads", "decoder_input"), "loss": ()}
LOSS_WEIGHTS = ("global_cosine", "codebook", "rqvae_reconstruction", "infonce", "diversity")
# the flags' values every config used, which no method has a field for
FIXED = {"quantizer.frqud_ratio": 2.0, "loss.next_token": 1.0, "loss.sdud": 1.0, "loss.infonce_temperature": 0.05}
JOINT_NAME = {"argmax": "dgi", "gumbel_soft": "dgi", "ste": "ste", "dril": "diger"}  # a joint run's method


def from_flags(raw: dict[str, Any]) -> dict[str, Any]:
    """A config of the flags that were there before ``method`` (``train.strategy``,
    ``quantizer.assignment``, ``model.tie_heads``, the ``loss`` weights, ...) as the same run's
    config with a ``method`` section; any other config unchanged. Every run folder of
    ``research/experiments`` loads through this and equals its plan's config (tests/test_config.py).
    A joint run with ``argmax`` codes is DGI without soft gradient flow (its only use)."""
    if "method" in raw or not any(key in raw.get(section, {}) or (section == "loss" and section in raw)
                                  for section, keys in FLAGS.items() for key in keys or (section,)):
        return raw
    raw = {section: dict(value) if isinstance(value, dict) else value for section, value in raw.items()}
    flags = {f"{section}.{key}": raw.get(section, {}).pop(key)
             for section, keys in FLAGS.items() if section != "loss" for key in keys if key in raw.get(section, {})}
    flags.update({f"loss.{key}": value for key, value in (raw.pop("loss", None) or {}).items()})
    for key, value in FIXED.items():
        if flags.pop(key, value) != value:
            raise ConfigError(f"{key}: {flags.get(key)!r} is no longer a setting (always {value})")
    strategy = flags.pop("train.strategy", "two_stage")
    if strategy != "joint":
        raw["method"] = {"name": strategy}
        _no_other_flags(flags, "model.decoder_input")
        return raw
    assignment = flags.pop("quantizer.assignment", "argmax")
    method = {"name": JOINT_NAME.get(assignment, assignment),
              "decoder_input": flags.pop("model.decoder_input", None) or "codebook",
              **{key: flags.pop(f"loss.{key}", 0.0) for key in LOSS_WEIGHTS}}
    if method["name"] == "dgi":
        method.update(soft_gradient_flow=assignment == "gumbel_soft", weight_sharing=flags.pop("model.tie_heads", False),
                      scaled_cosine=flags.pop("model.logits", "dot") == "cosine")
    elif method["name"] == "diger":
        method.update(decay=flags.pop("quantizer.decay", "none"))
    raw["method"] = method
    _no_other_flags(flags)
    return raw


# the flags' values that had no effect on the method a run translates to
NO_EFFECT = {"quantizer.assignment": "argmax", "quantizer.decay": "none", "quantizer.tau_start": 1.0,
             "quantizer.tau_end": 0.1, "quantizer.dril_temperature": 2.0, "model.tie_heads": False,
             "model.logits": "dot", "model.decoder_input": None, **{f"loss.{key}": 0.0 for key in LOSS_WEIGHTS}}


def _no_other_flags(flags: dict[str, Any], *also: str) -> dict[str, Any]:
    """Raise if a flag left untranslated had an effect (a combination no method stands for)."""
    for key, value in flags.items():
        if value != NO_EFFECT[key] and not (key in also and value == "embedding"):
            raise ConfigError(f"{key}: {value!r} has no equivalent in any method; see docs/config.md")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config (or the defaults), resolve its ``extends``, apply ``--set``
    overrides and check everything; :class:`ConfigError` names the file or override, the key and
    what is wrong, in one line."""
    sources = _Sources(str(path) if path is not None else "config")
    raw = _read_config(Path(path), sources) if path is not None else {}
    for assignment in overrides or []:
        parts, value = _parse_override(assignment)
        _set(raw, parts, value, assignment)
        sources.record(value, f"--set {assignment}", tuple(parts))
    try:
        return ExperimentConfig.model_validate(from_flags(raw))
    except ValidationError as exc:
        raise ConfigError(_explain(exc, sources)) from None


# ---------------------------------------------------------------------------------------------
# the reference (docs/config.md)

SECTIONS = ("data", "text", "quantizer", "parallel", "model", "train", "eval", "serve")
_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "true / false"}


def _constraints(metadata: list) -> str:
    words = []
    for item in metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(item, attr, None) is not None:
                words.append(f"{sign} {getattr(item, attr)}")
        if getattr(item, "min_length", None):
            words.append(f"at least {item.min_length} item(s)")
    return ", ".join(words)


def _type_text(annotation: Any, metadata: list) -> str:
    if get_origin(annotation) is Literal:
        text = "one of " + ", ".join(f"`{_choice(c)}`" for c in get_args(annotation))
    elif get_origin(annotation) is list:
        (item,) = get_args(annotation)
        inner, inner_meta = item, []
        if get_origin(item) is Annotated:
            inner, *extra = get_args(item)
            inner_meta = [m for info in extra for m in getattr(info, "metadata", [info])]
        text = f"list of {_TYPE_NAMES.get(inner, str(inner))}s"
        if inner_meta:
            text += f" ({_constraints(inner_meta)} each)"
    else:
        text = _TYPE_NAMES.get(annotation, str(annotation))
    bounds = _constraints(metadata)
    return f"{text}, {bounds}" if bounds else text


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default_text(value: Any) -> str:
    return "`" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() + "`"


def _table(model: type[BaseModel], names: list[str]) -> list[str]:
    defaults = model().model_dump()
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name in names:
        field = model.model_fields[name]
        lines.append(f"| `{name}` | {_cell(_type_text(field.annotation, field.metadata))} | "
                     f"{_cell(_default_text(defaults[name]))} | {_cell(field.description or '')} |")
    return lines


def reference_markdown() -> str:
    """docs/config.md: every section's fields (type or choices, default, description) and the rules
    checked across sections, generated from the models."""
    lines = [
        "# Config reference",
        "",
        "<!-- Generated by `python -m gensid.config docs/config.md` from src/gensid/config.py;",
        "     edit the models there, not this file (tests/test_config.py checks it is current). -->",
        "",
        "An experiment config is one YAML file (see `configs/`). Every key is optional: a missing one",
        "keeps the default below. `--set section.field=value` overrides one value (the value is read",
        "as YAML, e.g. `--set \"eval.ks=[5, 10]\"`). `extends: base.yaml` (relative to the file) starts",
        "from another config: mappings merge key by key, the extending file wins, lists are replaced.",
        "A run writes its resolved config (every field, no `extends`) as `config.yaml`.",
        "",
        "Everything is checked when the config loads, before anything is written; a problem is one",
        "line, e.g. `error: configs/x.yaml: quantizer.method: 'rqvea' is not allowed (did you mean",
        "'rqvae'?); expected one of rqkmeans, rqvae`.",
        "",
        "## top level",
        "",
        *_table(ExperimentConfig, ["name"]),
        "",
        "## `method`",
        "",
        " ".join((ExperimentConfig.model_fields["method"].description or "").split()) + ". A method's fields "
        "have the paper's defaults; the switches of its ablations are among them. The joint methods "
        "(the index learns with the model) share the decoder input and the loss weights (the total is "
        "next-token + the weighted terms). Run folders written before `method` existed (with "
        "`train.strategy`, `quantizer.assignment`, `model.tie_heads`, `loss`, ...) load as the same run "
        "with its method (`gensid.config.from_flags`).",
    ]
    for method in METHODS:
        fields = [name for name in method.model_fields if name != "name"]
        lines += ["", f"### `method: {method.model_fields['name'].default}`", "",
                  " ".join((sys.modules[method.__module__].__doc__ or "").split()), ""]
        lines += _table(method, fields) if fields else ["No settings of its own."]
    for name in SECTIONS:
        model = ExperimentConfig.model_fields[name].annotation
        lines += ["", f"## `{name}`", "", " ".join((model.__doc__ or "").split()), "",
                  *_table(model, list(model.model_fields))]
    lines += ["", "## Rules across sections", ""]
    lines += [f"- {' '.join((rule.__doc__ or '').split())}" for rule in RULES]
    lines += ["- `model.n_heads` divides `model.d_model`; `parallel.codebook_size` is a power of two."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m gensid.config [docs/config.md]
    text = reference_markdown()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
    else:
        sys.stdout.write(text)
