"""The config sections: one pydantic model per YAML section, and :class:`ExperimentConfig`,
which holds them all and checks the rules across sections (:mod:`gensid.config.rules`) when built."""

from __future__ import annotations

from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gensid.config.rules import RULES, Problem
from gensid.fields import Count, Float
from gensid.methods import NAMES, MethodConfig, TwoStage

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
    item_dropout: Float = Field(0.0, ge=0, lt=1, description="`item_ids`: the rate at which training scores "
                                "an item (in a history and as a candidate) without its free vector, with one "
                                "learned stand-in vector instead, which every item without a free vector (new "
                                "in a cold-start split, or added while serving) then gets: trains the model to "
                                "rank items by their digits, as it must rank a new item (DropoutNet's idea)")
    new_item_offset: Float | None = Field(None, description="`item_dropout`: added to the ranking score of "
                                          "every item scored by the stand-in. null: calibrated after training, "
                                          "so that on the validation split new items take the share of the "
                                          "top-10 lists that they take of the targets (0 without new items)")
    embedding_dropout: Float = Field(0.5, ge=0, lt=1, description="on the history tokens")
    attention_dropout: Float = Field(0.5, ge=0, lt=1, description="on the attention weights")

    @model_validator(mode="after")
    def _power_of_two(self) -> ParallelConfig:
        if self.codebook_size & (self.codebook_size - 1):
            raise Problem("codebook_size", f"{self.codebook_size} is not a power of two, e.g. 256")
        if self.item_ids and self.head != "shared":
            raise Problem("item_ids", "needs parallel.head shared (RPG's digit heads score digits only)")
        if self.item_dropout and not self.item_ids:
            raise Problem("item_dropout", "drops the free item vectors of parallel.item_ids, which is off")
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
    bucket_batches: int = Field(50, ge=1, description="batches are drawn from chunks of this many batches' "
                                "samples sorted by history length (less padding); 1: batches of random samples")


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


class SASRecConfig(Section):
    """`gensid baseline sasrec`: SASRec (Kang & McAuley 2018) with cross-entropy over the catalog, its
    positions `data.max_history`; trained by the Trainer with this section's schedule (no warmup,
    linear decay over `epochs`, batches of random windows), `train.seed`, `train.stop_epoch` and
    `train.threads`."""

    hidden: int = Field(64, ge=1, description="embedding and Transformer width (a multiple of `heads`)")
    layers: int = Field(2, ge=1, description="Transformer blocks")
    heads: int = Field(2, ge=1, description="attention heads")
    inner: int = Field(256, ge=1, description="feed-forward width")
    dropout: Float = Field(0.5, ge=0, lt=1, description="hidden dropout (RecBole's default)")
    attn_dropout: Float = Field(0.5, ge=0, lt=1, description="attention dropout")
    text_items: bool = Field(False, description="an item's embedding is a projection of its text vector plus a "
                             "free vector (zero at the start), so a new item is scored by its text (method "
                             "`sasrec_text`)")
    epochs: int = Field(300, ge=1, description="most epochs (the learning rate decays over them)")
    lr: Float = Field(1e-3, ge=0, description="peak learning rate")
    weight_decay: Float = Field(0.0, ge=0, description="AdamW weight decay")
    batch_size: int = Field(256, ge=1, description="training windows per step")
    patience: int = Field(10, ge=0, description=">0: stop after N epochs without a better validation ndcg@10")
    max_minutes: Float = Field(45.0, ge=0, description=">0: stop after this much training time")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> SASRecConfig:
        if self.hidden % self.heads:
            raise Problem("hidden", f"{self.hidden} must be a multiple of heads ({self.heads})", "heads")
        return self


class DenseConfig(Section):
    """`gensid baseline dense`: the dense dual encoder over frozen text vectors (search: the query and the
    history; recommendation: the history alone), trained with in-batch InfoNCE by the Trainer with this
    section's schedule (no warmup, linear decay over `epochs`, batches of random samples), `train.seed`,
    `train.stop_epoch` and `train.threads`; the best epoch by validation ndcg@10."""

    dim: int = Field(128, ge=1, description="width of the projected context and item vectors")
    temperature: Float = Field(0.05, gt=0, description="of the cosine scores")
    epochs: int = Field(5, ge=1, description="training epochs (the learning rate decays over them)")
    lr: Float = Field(1e-3, ge=0, description="peak learning rate (AdamW)")
    batch_size: int = Field(512, ge=2, description="samples per step (in-batch negatives)")


class BM25Config(Section):
    """`gensid baseline bm25` (search): BM25 over the item text; the query is the search query plus the
    titles of the history items."""

    k1: Float = Field(1.5, ge=0, description="term-frequency saturation")
    b: Float = Field(0.75, ge=0, le=1, description="length normalisation")


class BaselineConfig(Section):
    """The baselines' own settings (`gensid baseline KIND CONFIG`); the data, split, text encoder and
    evaluation are the config's other sections, as for a gensid run. `popular` has none."""

    sasrec: SASRecConfig = Field(default_factory=SASRecConfig)
    dense: DenseConfig = Field(default_factory=DenseConfig)
    bm25: BM25Config = Field(default_factory=BM25Config)


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
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)

    @model_validator(mode="after")
    def _rules(self) -> ExperimentConfig:
        for rule in RULES:
            rule(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

