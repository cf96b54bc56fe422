"""Items added to a trained run without retraining, and the store that keeps them.

The service (:mod:`gensid.serve`) adds items over HTTP and writes them to
``RUN_DIR/catalog.sqlite``; every other entry point that serves a run's items (``gensid
recommend``, Python's :func:`load_run_with_added_items`) replays that store, so an item added
over HTTP is known everywhere. Evaluation (``gensid evaluate``, ``load_run``) keeps the trained
catalog: the published protocol ranks the catalog the model was trained and tested on.
This package sits beside the run modules (it imports :mod:`gensid.run`, :mod:`gensid.prepare` and
:mod:`gensid.bundle`; none of them imports it at load, nor :mod:`gensid.serve`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gensid.bundle import load_servable
from gensid.live.adder import ItemAdder
from gensid.live.store import STORE_FILE, AddedItem, ItemStore, stored_items
from gensid.run import Run

__all__ = ["STORE_FILE", "AddedItem", "ItemAdder", "ItemStore", "load_run_with_added_items",
           "replay", "stored_items"]


def replay(adder: ItemAdder, added: list[AddedItem]) -> None:
    """Re-insert stored items into ``adder``'s run, with their stored SIDs and vectors."""
    if added:
        adder.add([a.item_id for a in added], [a.fields for a in added],
                  torch.from_numpy(np.stack([a.vector for a in added])),
                  np.asarray([a.sid for a in added], dtype=np.int64))


def load_run_with_added_items(run_dir: str | Path) -> Run:
    """A run folder or a bundle (:mod:`gensid.bundle`), loaded as the service loads it (no data
    split), plus the items added to it over HTTP (``catalog.sqlite``): what ``gensid recommend`` ranks."""
    run = load_servable(run_dir)
    replay(ItemAdder(run), stored_items(run.run_dir))
    return run
