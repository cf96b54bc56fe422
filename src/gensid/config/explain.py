"""Where each value of a raw config came from (a file or a ``--set``), and a pydantic error as
the one-line message ``<source>: <dotted.key>: <what is wrong>``."""

from __future__ import annotations

import difflib
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from gensid.config.rules import Problem
from gensid.config.sections import ExperimentConfig
from gensid.methods import METHODS, NAMES


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
