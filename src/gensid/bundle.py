"""A servable bundle: one folder with everything inference needs, and no data.

``gensid export RUN_DIR OUT_DIR`` (:func:`export_bundle`) writes it; :func:`load_bundle` builds the
run's :class:`~gensid.run.Run` from it without the raw data (no splits, no interactions: the
catalog comes from the item table). ``gensid serve``, ``gensid recommend`` and
:func:`gensid.live.load_run_with_added_items` take a bundle wherever they take a run folder.

A bundle holds the run folder's inference files under the same names, so the pipeline reads them
as it reads a run's::

    bundle.json                  format and version, gensid version, strategy, task, items, text
                                 fields, the files and their sizes
    config.yaml                  the run's resolved config (data.source is kept, never read)
    model.safetensors            the trained weights
    quantizer.safetensors        two-stage and joint runs: the fitted tokenizer
    index/pq.safetensors         parallel runs: the product quantizer
    index/sids.safetensors       the initial SIDs (parallel: the digits) and their sizes
    index/item_text.safetensors  the item text vectors [N, T]
    index/sid_stats.json         collision rate, code usage
    items.jsonl                  the item table, one line per item in internal-id order:
                                 {"id", "title", "fields"}
    metrics.json                 the run's metrics, when it has them
    catalog.sqlite               the items added to the run over HTTP, when any (and, once served,
                                 the items added to the bundle)

The export is atomic (written in a temporary folder beside ``OUT_DIR``, loaded once as a check,
then renamed). A bundle of another format version, or missing a file, is refused in one line.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

from gensid import __version__
from gensid.config.loading import load_config
from gensid.data import Catalog, Dataset, Interactions
from gensid.errors import InputError, RunError
from gensid.io import load_tensors, seed_everything, write_json
from gensid.prepare import assemble, load_run, load_task
from gensid.run import Run, run_config, run_files, with_weights

BUNDLE_FILE = "bundle.json"
ITEMS_FILE = "items.jsonl"
FORMAT = "gensid-bundle"
VERSION = 1


def is_bundle(path: str | Path) -> bool:
    """Whether ``path`` is (meant to be) a bundle: it has ``bundle.json`` or the item table."""
    path = Path(path)
    return (path / BUNDLE_FILE).exists() or (path / ITEMS_FILE).exists()


def inference_files(strategy: str) -> list[str]:
    """The run files a bundle of ``strategy`` needs (its tokenizer's included)."""
    tokenizer = "index/pq.safetensors" if strategy == "parallel" else "quantizer.safetensors"
    return ["config.yaml", "model.safetensors", tokenizer, "index/sids.safetensors", "index/item_text.safetensors",
            "index/sid_stats.json"]


def export_bundle(run_dir: str | Path, out_dir: str | Path) -> dict:
    """Write the bundle of the trained run ``run_dir`` into the new folder ``out_dir`` (absent or
    empty); returns its ``bundle.json``. Reads the run's data once, for the item table; items added
    to the run over HTTP come along in the bundle's ``catalog.sqlite``."""
    # here, not above: gensid.live imports this module
    from gensid.live.store import STORE_FILE, ItemStore, stored_items

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir}: exists and is not empty; give a new folder for the bundle")
    if is_bundle(run_dir):
        raise InputError(f"{run_dir}: a bundle already; copy the folder to move it")
    if (run_dir / "hybrid.json").exists():
        raise InputError(f"{run_dir}: a hybrid folder; a bundle holds a run: export the run it mixes")
    config, _ = run_files(run_dir)
    cfg = load_config(config)
    files = inference_files(cfg.method.family)
    missing = [name for name in files if not (run_dir / name).exists()]
    if missing:
        raise RunError(f"{run_dir}: the run has no {missing[0]}; it cannot be bundled")
    files += [name for name in ("metrics.json",) if (run_dir / name).exists()]
    dataset = load_task(run_config(run_dir), progress=False, splits=False)[1]  # the only read of the data
    vectors = len(load_tensors(run_dir / "index" / "item_text.safetensors")[0]["vectors"])
    if vectors != len(dataset.catalog):
        raise RunError(f"{run_dir}: {vectors} item text vectors, but its data gives {len(dataset.catalog)} "
                       "items; was data.source changed?")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        for name in files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(run_dir / name, tmp / name)
        write_items(tmp / ITEMS_FILE, dataset.catalog)
        files.append(ITEMS_FILE)
        added = stored_items(run_dir)  # one consistent read, even beside a server adding items
        if added:
            store = ItemStore(tmp / STORE_FILE)
            store.add(added)
            store.close()
        manifest = {"format": FORMAT, "version": VERSION, "gensid": __version__, "strategy": cfg.method.family,
                    "task": cfg.data.task, "dataset": dataset.name, "items": len(dataset.catalog),
                    "added_items": len(added), "text_fields": dataset.catalog.text_fields,
                    "exported_from": str(run_dir.resolve()),
                    "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "files": {name: (tmp / name).stat().st_size for name in files}}
        write_json(tmp / BUNDLE_FILE, manifest)
        load_bundle(tmp)  # what is moved into place loads
        sync_tree(tmp)
        try:
            os.rename(tmp, out_dir)  # replaces an empty folder; fails on a non-empty one
        except OSError as exc:
            raise InputError(f"{out_dir}: could not move the bundle into place ({exc.strerror}); "
                             "give a new folder") from None
        sync_tree(out_dir.parent, files=False)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest


def check_bundle(path: str | Path) -> dict:
    """``path``'s ``bundle.json`` after checking that it is a bundle of this format version and that
    every file it needs is there (and each weight file has its exported size); ``RunError`` in one
    line naming the version or the file."""
    path = Path(path)
    described = path / BUNDLE_FILE
    if not described.exists():
        raise RunError(f"{path}: the bundle misses {BUNDLE_FILE}; export the run again")
    try:
        manifest = json.loads(described.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{described}: not a bundle description ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise RunError(f"{described}: not a gensid bundle (format {found!r}, expected {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise RunError(f"{described}: bundle format version {manifest.get('version')!r}, but this gensid "
                       f"({__version__}) reads version {VERSION}; export the run again with this gensid")
    lacking = [key for key in ("strategy", "dataset", "items", "text_fields", "files") if key not in manifest]
    if lacking or not isinstance(manifest["files"], dict):
        raise RunError(f"{described}: lacks {', '.join(lacking) or 'a files object'}; export the run again")
    needed = {name: None for name in (*inference_files(manifest["strategy"]), ITEMS_FILE)} | manifest["files"]
    for name, size in needed.items():
        file = path / name
        if not file.is_file():
            raise RunError(f"{path}: the bundle misses {name}; export the run again")
        if size is not None and name.endswith(".safetensors") and file.stat().st_size != size:
            raise RunError(f"{file}: {file.stat().st_size} bytes, {size} when exported (a partial copy?); "
                           "copy or export the bundle again")
    return manifest


def load_bundle(path: str | Path) -> Run:
    """The run of a bundle, ready to rank items, built without any data: ``splits`` is None, the
    dataset has the item table's catalog and no interactions. The items added over HTTP are not
    replayed here (:func:`gensid.live.load_run_with_added_items` does)."""
    path = Path(path)
    manifest = check_bundle(path)
    cfg = load_config(path / "config.yaml")
    seed_everything(cfg.train.seed)
    catalog = read_items(path / ITEMS_FILE, manifest["text_fields"])
    text = load_tensors(path / "index" / "item_text.safetensors")[0]["vectors"]
    if not len(catalog) == len(text) == manifest["items"]:
        raise RunError(f"{path}: {len(catalog)} items in {ITEMS_FILE}, {len(text)} text vectors, "
                       f"{manifest['items']} in {BUNDLE_FILE}; export the run again")
    dataset = Dataset(manifest["dataset"], catalog, Interactions([], []))
    return with_weights(assemble(cfg, path, dataset, None, text), path / "model.safetensors")


def load_servable(path: str | Path) -> Run:
    """What serving loads: a bundle (:func:`load_bundle`), or a run folder without its data split."""
    return load_bundle(path) if is_bundle(path) else load_run(path, splits=False)


def write_items(path: Path, catalog: Catalog) -> None:
    """The item table: one JSON line per item, in internal-id order."""
    with open(path, "w", encoding="utf-8") as fh:
        for i, (item, fields) in enumerate(zip(catalog.item_ids, catalog.fields, strict=True)):
            fh.write(json.dumps({"id": item, "title": catalog.title(i), "fields": fields}, ensure_ascii=False) + "\n")


def read_items(path: Path, text_fields: list[str]) -> Catalog:
    """The catalog of an item table written by :func:`write_items`."""
    ids, fields = [], []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                ids.append(str(row["id"]))
                fields.append(dict(row["fields"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise RunError(f"{path}, line {number}: not an item ({exc!r})") from None
    return Catalog(ids, fields, text_fields)


def sync_tree(root: Path, files: bool = True) -> None:
    """fsync every file under ``root`` (with ``files``) and every folder, so a rename publishes
    complete contents."""
    for folder, _, names in os.walk(root):
        for name in names if files else ():
            with open(Path(folder) / name, "rb") as fh:
                os.fsync(fh.fileno())
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if not files:
            return
