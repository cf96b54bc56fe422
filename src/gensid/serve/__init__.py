"""HTTP service over a trained run: recommend, add items without retraining, look items up."""

from gensid.serve.app import create_app

__all__ = ["create_app"]
