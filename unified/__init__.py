"""One shared autoregressive backbone over text and HART hybrid tokens (see DESIGN.md)."""

from .backbone import Backbone, MultiAxisRotaryEmbedding
from .heads import HEADS, HeadConfig, ModalityHead, register_head
from .model import Example, UnifiedConfig, UnifiedModel
from .sequence import Item, SequenceBatch, SequenceBuilder, Text

__all__ = [
    "HEADS",
    "Backbone",
    "Example",
    "HeadConfig",
    "Item",
    "ModalityHead",
    "MultiAxisRotaryEmbedding",
    "SequenceBatch",
    "SequenceBuilder",
    "Text",
    "UnifiedConfig",
    "UnifiedModel",
    "register_head",
]
