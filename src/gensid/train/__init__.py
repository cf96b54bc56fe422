"""One Trainer: epochs, schedule, validation, best model, checkpoints and resume."""

from gensid.train.batches import Batch, ItemFeatures
from gensid.train.trainer import Trainer

__all__ = ["Batch", "ItemFeatures", "Trainer"]
