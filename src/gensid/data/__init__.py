"""Raw files -> Catalog (items and their text) + Interactions -> leave-one-out splits."""

from gensid.data.catalog import Catalog, Dataset, Interactions
from gensid.data.loaders import load_dataset
from gensid.data.splits import LeaveOneOut, Samples, leave_one_out

__all__ = [
    "Catalog",
    "Dataset",
    "Interactions",
    "LeaveOneOut",
    "Samples",
    "leave_one_out",
    "load_dataset",
]
