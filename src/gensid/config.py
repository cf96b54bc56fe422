"""Experiment configuration: nested dataclasses loaded from YAML, overridable by ``--set``.

One YAML per experiment lives in ``configs/``; every run writes its resolved
config next to its outputs as ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from gensid.errors import ConfigError


@dataclass
class DataConfig:
    source: str = "movielens-100k"  # "movielens-100k" or a path to a data folder / file
    format: str = "auto"  # auto | letter | recbole | csv | search_log (user, timestamp, query, item)
    task: str = "rec"  # rec (next item from the history) | search (query + history -> item)
    query_field: str = "categories"  # search on purchase data: the item field whose text is the query
    max_history: int = 20
    text_fields: list[str] = field(default_factory=lambda: ["title", "brand", "categories"])
    max_users: int = 0  # >0: keep only the first N users (quick runs and tests)


@dataclass
class TextConfig:
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 128


@dataclass
class QuantizerConfig:
    method: str = "rqkmeans"  # rqkmeans | rqvae
    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])
    geometry: str = "euclidean"  # euclidean | cosine
    # euclidean: scores are -scale * squared distance; the codes stay, soft assignments sharpen
    euclidean_scale: float = 1.0
    latent_dim: int = 64  # rqvae only: size of the quantized latent
    # joint: append TIGER's disambiguation code, recomputed from the current assignment at
    # every index refresh (two-stage SIDs always have it)
    disambiguation: bool = False
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])  # rqvae encoder MLP
    epochs: int = 200  # rqvae only
    lr: float = 1e-3
    beta: float = 0.25  # commitment weight
    batch_size: int = 1024
    # joint training (train.strategy=joint): how items are assigned codes while the index learns
    assignment: str = "argmax"  # argmax | ste | gumbel_soft (DGI) | dril (DIGER)
    decay: str = "none"  # dril uncertainty decay: none | sdud | frqud
    frqud_ratio: float = 2.0  # frqud: noise only on codes used more than ratio / K
    tau_start: float = 1.0  # gumbel_soft temperature, annealed exponentially ...
    tau_end: float = 0.1  # ... to this by the end of training
    dril_temperature: float = 2.0
    # joint: the next level's residual subtracts the deterministic code's codebook row instead of
    # the assignment's (soft / noisy) vector, so the training targets are the index's codes
    hard_residual: bool = False
    # joint with rqkmeans: a zero-initialised residual linear map on the item text vectors
    # (quantize.rqvae.ItemAdapter), so the losses can move the items themselves and not only the
    # codebooks (rqkmeans has no encoder; rqvae's encoder already learns)
    item_adapter: bool = False
    # two-stage: the tokenizer and SIDs of a finished joint run (its final, learned index) instead
    # of fitting them on the text vectors; the decoder then trains from scratch on that index
    sids_from: str = ""


@dataclass
class ParallelConfig:
    """train.strategy parallel (RPG): long unordered SIDs from product quantization, all digits
    predicted at once, every catalog item scored exactly."""

    digits: int = 32  # digits per item; must divide the text vector's dimensions
    codebook_size: int = 256  # codes per digit (a power of two)
    opq: bool = True  # learn a rotation before product quantization (OPQ); false: plain PQ
    whiten: bool = False  # PCA-whiten the text vectors first
    temperature: float = 0.07  # digit logits = cos(head state, digit embedding) / temperature
    embedding_dropout: float = 0.5  # on the history tokens
    attention_dropout: float = 0.5
    # > 0: add a softmax over items (weight item_loss) whose logit is the mean of the item's digit
    # logits, the score that ranks; the target against this many uniformly drawn catalog items
    # (all items when it reaches the catalog size). 0: RPG's digit-wise loss alone
    item_negatives: int = 0
    item_loss: float = 1.0


@dataclass
class ModelConfig:
    d_model: int = 128
    n_heads: int = 4
    encoder_layers: int = 4
    decoder_layers: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    # one token per history item: codes | codes+text | quantized | quantized+text (the item's
    # quantized vector, joint only); or code_tokens (one token per code, TIGER's input)
    history_input: str = "codes"
    logits: str = "dot"  # dot | cosine (scaled cosine with a learnable gamma)
    tie_heads: bool = False  # joint only: the head of level m *is* codebook m (DGI)
    # the decoder's input for a code: embedding (a learned per-code vector; the only choice for
    # two-stage), codebook (joint, DGI: the codebook vector, during training the assignment's
    # soft / straight-through vector) or embedding+codebook (joint: both, summed). None: the
    # strategy's own (two-stage embedding, joint codebook)
    decoder_input: str | None = None
    embedding_init_std: float = 0.02  # code embeddings ~ N(0, std); 0 keeps torch's N(0, 1)


@dataclass
class LossConfig:
    """Weights of the loss terms (joint strategy; two-stage uses next-token only)."""

    next_token: float = 1.0
    global_cosine: float = 0.0  # DGI: 1 - cos(z_base, sum_j z~_j)
    codebook: float = 0.0  # per-level codebook + beta * commitment
    rqvae_reconstruction: float = 0.0  # DIGER: MSE of the RQ-VAE decoder's text reconstruction
    infonce: float = 0.0  # in-batch InfoNCE between context vector and target item vector
    infonce_temperature: float = 0.05
    diversity: float = 0.0  # 1 - normalised entropy of the batch's mean code distribution
    sdud: float = 1.0  # SDUD's sigma objective (only with quantizer.decay=sdud)


@dataclass
class TrainConfig:
    # two_stage (frozen SIDs) | joint (the index learns with the model) | parallel (long unordered
    # SIDs, every digit at once; see ParallelConfig)
    strategy: str = "two_stage"
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    quantizer_lr: float = 1e-3  # joint: item encoder + quantizer learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 200
    label_smoothing: float = 0.0
    seed: int = 0
    max_minutes: float = 0.0  # >0: stop training after this wall time
    # >0: stop after this many epochs while the learning-rate (and temperature) schedules still
    # span ``epochs``: repeats a time-budgeted run epoch for epoch on a slower or busier machine
    stop_epoch: int = 0
    # a finished run to start from: its item side (text vectors, tokenizer, SIDs) and weights;
    # e.g. joint training on top of a trained two-stage run (see pipeline.copy_item_side)
    init_from: str = ""
    # joint: >0 freezes the item side after this many epochs (argmax codes, no gradient into the
    # tokenizer, the index of that moment); the epochs left train the recommender on fixed SIDs,
    # so the decoder ends on the codes it is evaluated with instead of chasing moving ones
    freeze_index_epoch: int = 0
    bf16: bool = False  # autocast matmuls to bfloat16 on CPU
    threads: int = 0  # >0: torch threads (1 avoids oversubscription when jobs share the cores)
    eval_every: int = 1  # validate every N epochs (keep the best checkpoint)
    patience: int = 0  # >0: stop after N validations without improvement


@dataclass
class EvalConfig:
    beam_size: int = 20
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    batch_size: int = 256
    max_users: int = 0  # >0: evaluate on the first N users only (quick validation)
    # joint runs' geometric verification: items are ranked by beam log-probability plus
    # verify_weight x cosine(context vector, item vector). 0 is DGI's rule (beam score first, the
    # cosine only orders items with equal beam scores, i.e. those that share a SID); > 0 lets the
    # cosine move items between SIDs, a dense score fused with the generative one.
    verify_weight: float = 0.0


@dataclass
class ExperimentConfig:
    name: str = "default"
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; expected one of {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, path)
        else:
            kwargs[name] = _coerce(value, hint, path)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = getattr(hint, "__origin__", None)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = hint.__args__
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint) or (
        hint is int and isinstance(value, bool)
    ):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {assignment!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(text)


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment config (or the defaults) and apply ``--set`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    for assignment in overrides or []:
        apply_override(raw, assignment)
    # YAML 1.1 reads "1e-3" as a string: make it a float where a float is expected
    _fix_numeric_strings(raw, ExperimentConfig)
    where = str(path) if path is not None else "config"
    try:
        return _build(ExperimentConfig, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _fix_numeric_strings(raw: dict[str, Any], cls: type) -> None:
    hints = get_type_hints(cls)
    for name, value in list(raw.items()):
        hint = hints.get(name)
        if hint is None:
            continue
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            _fix_numeric_strings(value, hint)
        elif hint is float and isinstance(value, str) and _looks_numeric(value):
            raw[name] = float(value)
