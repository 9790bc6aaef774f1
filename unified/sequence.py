"""The sequence format: text and modality items in one token stream, by one rule for every modality.

A row is a list of segments: `Text` (token ids) and `Item` (an image now; a video or audio clip later).
An item the model writes (`loss=True`, or generated) of K scales occupies K groups of positions
(scale k's group predicts scale k's codes; its input is the start embedding for k = 0, else the
downsampled latent after scales < k), plus, when something reads the item afterwards (`full=True`),
one more group holding the complete latent, so text after an image sees all of it. An item that is
only read (a caption's or a question's image) is that one latent group: its scale groups would
predict nothing and hold nothing the complete latent lacks, and they are 2/3 of a 32px caption row.

Every position gets:
- a block id: attention is allowed from a query to a key whose block id is <= its own. Text tokens
  are one block each (causal), an item group is one block (bidirectional inside a scale, causal
  across scales); text after an item sees the whole item;
- a (t, h, w) position: text (p, p, p); an item placed at p0 puts cell (r, c) of a scale with grid
  (g_h, g_w) at (p0 + segment, p0 + r * G_h / g_h, p0 + c * G_w / g_w), G the last (latent) grid, and
  1-D grids use h = p0; text after the item continues at p0 + max(G, segments).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hart_core.quantizer import HybridTokens

Grid = tuple[int, ...]
IGNORE = -100


@dataclass
class Text:
    ids: list[int]
    loss: bool = False  # train the model to produce these tokens


@dataclass
class Item:
    modality: str
    tokens: HybridTokens | None = None  # one row; None while it is being generated
    loss: bool = False  # train the model to produce this item
    full: bool = False  # append the complete latent as a last group (something reads the item)

    @property
    def scale_groups(self) -> bool:
        """Whether the item lays out its K scale groups: only when the model writes it."""
        return self.loss or not self.full


@dataclass
class ItemLayout:
    """Where an item landed in the batch."""

    modality: str
    row: int
    start: int  # column of its first position
    group_sizes: tuple[int, ...]
    segment: Item

    @property
    def length(self) -> int:
        return sum(self.group_sizes)


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


def group_positions(grid: Grid, final: Grid, p0: float, segment: int = 0) -> torch.Tensor:
    """(t, h, w) of every cell of one scale, row-major: [prod(grid), 3]."""
    if len(grid) == 2:
        (gh, gw), (fh, fw) = grid, final
        r = torch.arange(gh).repeat_interleave(gw) / gh * fh
        c = torch.arange(gw).repeat(gh) / gw * fw
    else:
        (gl,), (fl,) = grid, final
        c = torch.arange(gl) / gl * fl
        r = torch.zeros_like(c)
    t = torch.full_like(c, float(segment))
    return torch.stack((t, r, c), dim=-1) + p0


def item_extent(grids: tuple[Grid, ...], segments: int = 1) -> int:
    return max(max(grids[-1]), segments)


class SequenceBuilder:
    """Turns rows of segments into padded tensors. `grids[modality]` is that codec's scale grids."""

    def __init__(self, grids: dict[str, tuple[Grid, ...]], pad_id: int):
        self.grids = grids
        self.pad_id = pad_id

    def group_sizes(self, modality: str, item: Item) -> tuple[int, ...]:
        sizes = tuple(int(torch.tensor(g).prod()) for g in self.grids[modality])
        return (sizes if item.scale_groups else ()) + ((sizes[-1],) if item.full else ())

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
            for start, sizes, seg in r["items"]:
                items.append(ItemLayout(seg.modality, b, off + start, sizes, seg))
        return SequenceBatch(
            text_ids, valid, block, positions, targets, items,
            next_position=torch.tensor([r["next_position"] for r in per_row], dtype=torch.float),
            next_block=torch.tensor([r["next_block"] for r in per_row], dtype=torch.long),
        )

    def _layout(self, row: list[Text | Item]) -> dict:
        ids, block, positions, targets, items = [], [], [], [], []
        p, b = 0.0, 0
        for seg in row:
            if isinstance(seg, Text):
                for tok in seg.ids:
                    if seg.loss and ids:
                        targets[-1] = tok  # the previous position predicts this token
                    ids.append(tok)
                    block.append(b)
                    positions.append(torch.full((3,), p))
                    targets.append(IGNORE)
                    p, b = p + 1, b + 1
            elif isinstance(seg, Item):
                if seg.modality not in self.grids:
                    raise ValueError(f"no codec for modality {seg.modality!r} (known: {sorted(self.grids)})")
                grids = self.grids[seg.modality]
                sizes = self.group_sizes(seg.modality, seg)
                items.append((len(ids), sizes, seg))
                first = 0 if seg.scale_groups else len(grids)
                for k, n in enumerate(sizes, start=first):
                    grid = grids[min(k, len(grids) - 1)]
                    positions.extend(group_positions(grid, grids[-1], p).unbind(0))
                    ids.extend([self.pad_id] * n)
                    block.extend([b] * n)
                    targets.extend([IGNORE] * n)
                    b += 1
                p += item_extent(grids)
            else:
                raise TypeError(f"unknown segment {seg!r}")
        return dict(ids=ids, block=block, positions=positions, targets=targets, items=items,
                    next_position=p, next_block=b)
