"""Final SIDs -> SIDIndex (trie of valid prefixes, leaf -> item); constrained beam search."""

from gensid.index.beam import BeamResult, constrained_beam_search
from gensid.index.sid_index import SIDIndex

__all__ = ["BeamResult", "SIDIndex", "constrained_beam_search"]
