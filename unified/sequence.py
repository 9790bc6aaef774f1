"""The sequence format: text and modality items in one token stream, by one rule for every modality.

A row is a list of parts: `Text` (token ids) and `Item` (an image, a video, an audio clip: one
HybridTokens row per segment). Where an item's codes go is the item's `ItemPattern` (pattern.py):
scale groups for an item the model writes, complete-latent groups for what is read afterwards.

Every position gets:
- a block id: attention is allowed from a query to a key whose block id is <= its own. Text tokens
  are one block each (causal), an item group is one block (bidirectional inside a scale, causal
  across scales and segments); text after an item sees the whole item;
- a (t, h, w) position: text (p, p, p); an item placed at p0 takes the pattern's positions + p0, and
  text after it continues at p0 + pattern.extent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hart_core.quantizer import Grid, HybridTokens

from .pattern import ItemPattern

IGNORE = -100


@dataclass
class Text:
    ids: list[int]
    loss: bool = False  # train the model to produce these tokens


@dataclass
class Item:
    """An item in a row: `tokens` holds one row per segment (None: no segment laid out yet)."""

    modality: str
    tokens: HybridTokens | None = None
    loss: bool = False  # train the model to write it
    read: bool = False  # what follows reads it whole (its complete latents)
    written: bool | None = None  # laid out as the model writes it (scale groups); default: `loss`
    # per scale, the codes its teacher-forcing input is built from when they are not tokens.indices (the
    # self-correction's erroneous codes, which the targets in tokens.indices correct); None: tokens.indices
    inputs: list[torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.written is None:
            self.written = self.loss
        if self.loss and not self.written:
            raise ValueError("an item trained to be written must be laid out as written")



Part = Text | Item


@dataclass
class ItemLayout:
    """Where an item landed in the batch."""

    row: int
    start: int  # column of its first position
    pattern: ItemPattern
    item: Item

    @property
    def modality(self) -> str:
        return self.item.modality

    @property
    def length(self) -> int:
        return self.pattern.length


@dataclass
class SequenceBatch:
    text_ids: torch.Tensor  # [B, L] long (pad id where not text)
    valid: torch.Tensor  # [B, L] bool, False on padding
    block: torch.Tensor  # [B, L] long, attention block ids (-1 on padding)
    positions: torch.Tensor  # [B, L, 3] float
    text_targets: torch.Tensor  # [B, L] long: the text token the position must predict, or IGNORE
    items: list[ItemLayout] = field(default_factory=list)
    next_position: torch.Tensor | None = None  # [B] float: where text would continue
    next_block: torch.Tensor | None = None  # [B] long

    def attention_mask(self) -> torch.Tensor:
        return attention_mask(self.block, self.valid, self.block, self.valid)

    def to(self, device) -> SequenceBatch:
        for name in ("text_ids", "valid", "block", "positions", "text_targets", "next_position",
                     "next_block"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self


def attention_mask(q_block, q_valid, k_block, k_valid) -> torch.Tensor:
    """[B, Lq, Lk] bool, True where a query may attend a key. The queries are the last Lq keys (a
    prefix may sit in a KV cache). Padding queries attend only to their own slot, so no softmax row
    is empty."""
    allowed = (k_block[:, None, :] <= q_block[:, :, None]) & k_valid[:, None, :]
    lq, lk = q_block.shape[1], k_block.shape[1]
    own = torch.zeros(lq, lk, dtype=torch.bool, device=q_block.device)
    own[torch.arange(lq), torch.arange(lk - lq, lk)] = True
    return torch.where(q_valid[:, :, None], allowed, own[None])


class SequenceBuilder:
    """Turns rows of parts into padded tensors. `grids[modality]` is that codec's scale grids."""

    def __init__(self, grids: dict[str, tuple[Grid, ...]], pad_id: int):
        self.grids = grids
        self.pad_id = pad_id

    def pattern(self, modality: str, segments: int = 1, written: bool = True, read: bool = False) -> ItemPattern:
        if modality not in self.grids:
            raise ValueError(f"no codec for modality {modality!r} (known: {sorted(self.grids)})")
        return ItemPattern(self.grids[modality], segments, written, read)

    def build(self, rows: list[list[Text | Item]], pad_side: str = "right") -> SequenceBatch:
        if pad_side not in ("left", "right"):
            raise ValueError("pad_side must be 'left' or 'right'")
        per_row = [self._layout(row) for row in rows]
        L = max(len(r["ids"]) for r in per_row)
        B = len(rows)
        text_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        valid = torch.zeros(B, L, dtype=torch.bool)
        block = torch.full((B, L), -1, dtype=torch.long)
        positions = torch.zeros(B, L, 3)
        targets = torch.full((B, L), IGNORE, dtype=torch.long)
        items = []
        for b, r in enumerate(per_row):
            n = len(r["ids"])
            off = L - n if pad_side == "left" else 0
            sl = slice(off, off + n)
            text_ids[b, sl] = torch.tensor(r["ids"], dtype=torch.long)
            valid[b, sl] = True
            block[b, sl] = torch.tensor(r["block"])
            positions[b, sl] = torch.stack(r["positions"]) if n else positions[b, sl]
            targets[b, sl] = torch.tensor(r["targets"], dtype=torch.long)
            for start, pattern, item in r["items"]:
                items.append(ItemLayout(b, off + start, pattern, item))
        return SequenceBatch(
            text_ids, valid, block, positions, targets, items,
            next_position=torch.tensor([r["next_position"] for r in per_row], dtype=torch.float),
            next_block=torch.tensor([r["next_block"] for r in per_row], dtype=torch.long),
        )

    def _layout(self, row: list[Part]) -> dict:
        ids, block, positions, targets, items = [], [], [], [], []
        p, b = 0.0, 0
        for part in row:
            if isinstance(part, Text):
                for tok in part.ids:
                    if part.loss and ids:
                        targets[-1] = tok  # the previous position predicts this token
                    ids.append(tok)
                    block.append(b)
                    positions.append(torch.full((3,), p))
                    targets.append(IGNORE)
                    p, b = p + 1, b + 1
            elif isinstance(part, Item):
                if part.tokens is None:
                    raise ValueError(f"a {part.modality} item in a row needs its tokens (generation writes "
                                     "items after the row, it does not lay out empty ones)")
                pattern = self.pattern(part.modality, part.tokens.batch_size, bool(part.written), part.read)
                if part.tokens.grids != pattern.grids:
                    raise ValueError(f"{part.modality} tokens have grids {part.tokens.grids}, its codec "
                                     f"uses {pattern.grids}")
                items.append((len(ids), pattern, part))
                positions.extend(pattern.positions(p).unbind(0))
                ids.extend([self.pad_id] * pattern.length)
                block.extend((pattern.relative_blocks + b).tolist())
                targets.extend([IGNORE] * pattern.length)
                b += pattern.num_blocks
                p += pattern.extent
            else:
                raise TypeError(f"unknown row part {part!r}")
        return dict(ids=ids, block=block, positions=positions, targets=targets, items=items,
                    next_position=p, next_block=b)
