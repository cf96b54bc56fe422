"""Field types shared by the config sections (:mod:`gensid.config.sections`) and the methods' settings
(:mod:`gensid.methods`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string: a numeric string is a float here."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]
Count = Annotated[int, Field(ge=1)]  # a list item that must be positive
