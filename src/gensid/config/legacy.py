"""Configs written before methods were objects (run folders' config.yaml up to gensid 0.1.0):
:func:`from_flags` translates their flags into the same run's ``method`` section."""

from __future__ import annotations

from typing import Any

from gensid.errors import ConfigError

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
