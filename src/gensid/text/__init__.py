"""Item and query text -> embeddings with an offline sentence encoder, cached on disk."""

from gensid.text.encoder import TextEncoder, embed_texts

__all__ = ["TextEncoder", "embed_texts"]
