"""Training methods as objects: ``method:`` in a config picks one (``method: dgi`` or a mapping
``{name: dgi, weight_sharing: false}``), whose fields carry the paper's defaults and ablation
switches and whose methods build what differs (:mod:`gensid.methods.base`).

Adding a method: one module here with a :class:`Method` subclass (its ``name`` a ``Literal``), one
entry in :data:`METHODS`, and a preset config in ``configs/``.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BeforeValidator, Field

from gensid.methods.base import JointMethod, Method
from gensid.methods.dgi import DGI
from gensid.methods.diger import DIGER
from gensid.methods.parallel import Parallel
from gensid.methods.ste import STE
from gensid.methods.two_stage import TwoStage

METHODS: tuple[type[Method], ...] = (TwoStage, STE, DGI, DIGER, Parallel)
NAMES: tuple[str, ...] = tuple(m.model_fields["name"].default for m in METHODS)


def _named(value: Any) -> Any:
    """``method: dgi`` is short for ``method: {name: dgi}``."""
    return {"name": value} if isinstance(value, str) else value


# the config's `method` field: one of METHODS, picked by its `name`
MethodConfig = Annotated[Union[METHODS], Field(discriminator="name"), BeforeValidator(_named)]  # noqa: UP007

__all__ = ["DGI", "DIGER", "METHODS", "NAMES", "STE", "JointMethod", "Method", "MethodConfig", "Parallel",
           "TwoStage"]
