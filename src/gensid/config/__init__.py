"""Experiment configuration: pydantic models loaded from YAML, overridable by ``--set``.

One YAML per experiment lives in ``configs/``; every run writes its resolved config next to its
outputs as ``config.yaml``. A config may start from another (``extends: base.yaml``, relative to
the file; deep-merged, the child wins). Everything is checked when the config is loaded: unknown
keys, types, choices, and the rules that tie sections together (:data:`RULES`); a problem raises
:class:`~gensid.errors.ConfigError` whose one-line message reads
``<file or --set KEY=VALUE>: <dotted.key>: <what is wrong>``.

``python -m gensid.config docs/config.md`` writes the reference of every field (docs/config.md).

This module only re-exports, for scripts, tests and configs' readers; the code is in:

- :mod:`gensid.config.sections`: the sections and :class:`ExperimentConfig`;
- :mod:`gensid.config.rules`: the rules across sections (:data:`RULES`, :class:`Problem`);
- :mod:`gensid.config.loading`: :func:`load_config` (files, ``extends``, ``--set`` overrides);
- :mod:`gensid.config.explain`: where a value came from, and the one-line error message;
- :mod:`gensid.config.legacy`: :func:`from_flags`, configs written before methods were objects;
- :mod:`gensid.config.reference`: docs/config.md (:func:`reference_markdown`).

Library code imports from those modules.
"""

from gensid.config.legacy import FIXED, FLAGS, JOINT_NAME, LOSS_WEIGHTS, NO_EFFECT, from_flags
from gensid.config.loading import apply_override, load_config
from gensid.config.reference import SECTIONS, reference_markdown
from gensid.config.rules import JOINT, PARALLEL_HISTORY_INPUTS, RULES, Problem
from gensid.config.sections import (
    TASKS,
    BaselineConfig,
    BM25Config,
    DataConfig,
    DataFormat,
    DenseConfig,
    EvalConfig,
    ExperimentConfig,
    Geometry,
    HistoryInput,
    ModelConfig,
    ParallelConfig,
    ParallelHead,
    ParallelLoss,
    QuantizerConfig,
    QuantizerMethod,
    SASRecConfig,
    Section,
    ServeConfig,
    Split,
    Task,
    TextConfig,
    TrainConfig,
)

__all__ = [
    "FIXED", "FLAGS", "JOINT", "JOINT_NAME", "LOSS_WEIGHTS", "NO_EFFECT", "PARALLEL_HISTORY_INPUTS", "RULES",
    "SECTIONS", "TASKS", "BM25Config", "BaselineConfig", "DataConfig", "DenseConfig", "DataFormat", "EvalConfig", "ExperimentConfig", "Geometry", "HistoryInput",
    "ModelConfig", "ParallelConfig", "ParallelHead", "ParallelLoss", "Problem", "QuantizerConfig",
    "QuantizerMethod", "SASRecConfig", "Section", "ServeConfig", "Split", "Task", "TextConfig", "TrainConfig", "apply_override",
    "from_flags", "load_config", "reference_markdown",
]
