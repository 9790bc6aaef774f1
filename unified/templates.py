"""Task templates: how one example of a task is laid out as a row of text and items, for any modality.

Every template is a function of the text specials, the item and the texts, registered under a name
(and aliases a recipe may use, e.g. "t2i" for text-to-image). The item's modality picks its own
begin/end specials (<boi>/<eoi> for images, <bov>/<eov> for video, ...), so the same template serves
text-to-image, text-to-video and text-to-audio. A template called with `target=None` stops where
generation begins.

    text_to_item   <bos> prompt <begin> ITEM <end> <eos>          writes the item (t2i, t2v, t2a); an
                                                                  empty prompt is unconditional; given
                                                                  first segments make it a continuation
    describe       <bos> <begin> ITEM <end> caption <eos>         writes text about the item (caption)
    qa             <bos> <begin> ITEM <end> question <sep> answer <eos>
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .sequence import Item, Part, Text


@dataclass(frozen=True)
class Specials:
    """Token ids a template places; begin/end are the item's modality's own."""

    bos: int
    eos: int
    sep: int
    begin: int
    end: int


@dataclass(frozen=True)
class Template:
    name: str
    writes: str  # "item" or "text": what the model learns to write, and what generation produces
    layout: Callable[[Specials, Item | None, list[int], list[int] | None, list[int] | None], list[Part]]


TEMPLATES: dict[str, Template] = {}
_ALIASES: dict[str, str] = {}


def register_template(name: str, writes: str, aliases: tuple[str, ...] = ()):
    """Decorator: `layout(specials, item, prompt_ids, target_ids, question_ids) -> row`."""
    if writes not in ("item", "text"):
        raise ValueError(f"a template writes 'item' or 'text', not {writes!r}")

    def deco(layout):
        for key in (name, *aliases):
            if key in TEMPLATES or key in _ALIASES:
                raise ValueError(f"template name {key!r} is already registered")
        TEMPLATES[name] = Template(name, writes, layout)
        _ALIASES.update({a: name for a in aliases})
        return layout

    return deco


def get_template(name: str) -> Template:
    template = TEMPLATES.get(_ALIASES.get(name, name))
    if template is None:
        known = sorted([*TEMPLATES, *_ALIASES])
        raise ValueError(f"unknown task {name!r} (known: {', '.join(known)})")
    return template


@register_template("text_to_item", writes="item", aliases=("t2i", "t2v", "t2a", "continuation"))
def _text_to_item(sp: Specials, item: Item | None, prompt: list[int], target=None, question=None) -> list[Part]:
    # item: the item to learn (training), or its given first segments (generation), or None
    row: list[Part] = [Text([sp.bos, *prompt, sp.begin])]
    if item is not None:
        row.append(item)
        if item.loss:
            row.append(Text([sp.end, sp.eos]))
    return row


@register_template("describe", writes="text", aliases=("caption",))
def _describe(sp: Specials, item: Item | None, prompt=None, target: list[int] | None = None,
              question=None) -> list[Part]:
    row: list[Part] = [Text([sp.bos, sp.begin]), item, Text([sp.end])]
    if target is not None:
        row.append(Text([*target, sp.eos], loss=True))
    return row


@register_template("qa", writes="text")
def _qa(sp: Specials, item: Item | None, prompt=None, target: list[int] | None = None,
        question: list[int] | None = None) -> list[Part]:
    if not question:
        raise ValueError("the qa task needs a question")
    row: list[Part] = [Text([sp.bos, sp.begin]), item, Text([sp.end, *question, sp.sep])]
    if target is not None:
        row.append(Text([*target, sp.eos], loss=True))
    return row
