"""Item and query text -> embeddings with an offline sentence encoder, cached on disk."""

from gensid.text.encoder import TextEncoder, embed_split_texts, embed_texts

__all__ = ["TextEncoder", "embed_split_texts", "embed_texts"]
