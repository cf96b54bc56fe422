"""gensid: generative retrieval and recommendation with learnable semantic IDs."""

__version__ = "0.1.0"
