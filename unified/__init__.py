"""One shared autoregressive backbone over text and HART hybrid tokens (see DESIGN.md)."""

from .backbone import Backbone, MultiAxisRotaryEmbedding
from .config import Example, UnifiedConfig
from .heads import HEADS, HeadConfig, ModalityHead, register_head
from .model import UnifiedModel
from .pattern import Group, ItemPattern
from .sequence import Item, SequenceBatch, SequenceBuilder, Text
from .session import DecodingSession
from .templates import TEMPLATES, Template, get_template, register_template

__all__ = [
    "HEADS",
    "TEMPLATES",
    "Backbone",
    "DecodingSession",
    "Example",
    "Group",
    "HeadConfig",
    "Item",
    "ItemPattern",
    "ModalityHead",
    "MultiAxisRotaryEmbedding",
    "SequenceBatch",
    "SequenceBuilder",
    "Template",
    "Text",
    "UnifiedConfig",
    "UnifiedModel",
    "get_template",
    "register_head",
    "register_template",
]
