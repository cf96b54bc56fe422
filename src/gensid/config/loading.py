"""Loading a config: YAML files (with their ``extends`` chain), ``--set`` overrides, and the check
of everything (:func:`load_config`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gensid.config.explain import _explain, _shown, _Sources
from gensid.config.legacy import from_flags
from gensid.config.sections import ExperimentConfig
from gensid.errors import ConfigError


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
