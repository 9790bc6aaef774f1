"""Where an item's codes sit in the token stream: the one place that knows the layout rule.

An item (an image, a video, an audio clip) is N segments (an image 1, a video one per frame, audio one
per chunk), each a ladder of K scales on grids g_0 .. g_{K-1} (the last, G, is the latent grid). Its
positions come in groups; each group is one attention block:

- an item the model writes lays out, per segment, its K scale groups (scale k's group predicts scale
  k's codes; its input is the start embedding for k = 0, else the downsampled latent after scales < k),
  then a *complete* group (the segment's whole latent, codes + residual) when something after it
  reads the segment: a later segment, or text after the item (`read`);
- an item that is only read (a caption's image, a question's video) is its complete groups alone: its
  scale groups would predict nothing and hold nothing the complete latent lacks.

Attention: a position sees every block <= its own, so a scale sees the scales <= its own in its
segment and every group of earlier segments; segments are causal.
Positions (t, h, w), relative to the item's origin p0: cell (r, c) of a grid (g_h, g_w) in segment s
sits at (s, r * G_h / g_h, c * G_w / g_w); 1-D grids use h = 0. Text after the item continues at
p0 + `extent` = p0 + max(G..., N), so it never collides with the item's positions.

The sequence builder, the embeddings, the losses and decoding all ask an `ItemPattern`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from hart_core.quantizer import Grid


@dataclass(frozen=True)
class Group:
    segment: int
    scale: int  # 0..K-1 for a scale group; K for the complete latent
    grid: Grid
    start: int  # offset of its first position inside the item
    block: int  # attention block, relative to the item's first
    ladder_offset: int  # where its inputs sit in the segment's [scale groups..., complete] inputs
    complete: bool  # the segment's whole latent (scale == K), read by what follows

    @property
    def size(self) -> int:
        return math.prod(self.grid)


def group_positions(grid: Grid, final: Grid, p0: float, segment: int = 0) -> torch.Tensor:
    """(t, h, w) of every cell of one grid, row-major: [prod(grid), 3]."""
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


class ItemPattern:
    """The groups of one item of `segments` segments over a codec's `grids`.

    written: the model writes the item (scale groups per segment); read: positions after the item
    read it whole (a complete group after the last segment too; earlier segments of a written item
    always get one, since the next segment reads them).
    """

    def __init__(self, grids: tuple[Grid, ...], segments: int = 1, written: bool = True, read: bool = False):
        if segments < 1:
            raise ValueError(f"an item has at least one segment, got {segments}")
        self.grids = tuple(tuple(g) for g in grids)
        self.segments, self.written, self.read = segments, written, read
        sizes = [math.prod(g) for g in self.grids]
        K = len(self.grids)
        groups, start, block = [], 0, 0
        for s in range(segments):
            if written:
                offset = 0
                for k, (g, n) in enumerate(zip(self.grids, sizes, strict=True)):
                    groups.append(Group(s, k, g, start, block, offset, False))
                    start, block, offset = start + n, block + 1, offset + n
            if not written or read or s < segments - 1:
                groups.append(Group(s, K, self.grids[-1], start, block, sum(sizes), True))
                start, block = start + sizes[-1], block + 1
        self.groups: tuple[Group, ...] = tuple(groups)
        self.length, self.num_blocks = start, block

    @property
    def extent(self) -> int:
        """How far positions move past the item: text after it continues at p0 + extent."""
        return max(max(self.grids[-1]), self.segments)

    def group(self, segment: int, scale: int) -> Group:
        """Scale `scale` of `segment` (scale = K: its complete group)."""
        for g in self.groups:
            if g.segment == segment and g.scale == scale:
                return g
        raise KeyError(f"this pattern has no group for segment {segment}, scale {scale}")

    def has_complete(self, segment: int) -> bool:
        return any(g.segment == segment and g.complete for g in self.groups)

    def segment_start(self, segment: int) -> int:
        """Offset of a written segment's first scale group (its K scale groups are consecutive)."""
        return self.group(segment, 0).start

    def group_positions(self, group: Group, p0: float = 0.0) -> torch.Tensor:
        return group_positions(group.grid, self.grids[-1], p0, group.segment)

    @cached_property
    def relative_blocks(self) -> torch.Tensor:
        """[length] block of every position, relative to the item's first block."""
        return torch.cat([torch.full((g.size,), g.block, dtype=torch.long) for g in self.groups])

    def positions(self, p0: float) -> torch.Tensor:
        """[length, 3] positions of the item placed at p0 (the same floats as group by group)."""
        return torch.cat([self.group_positions(g, p0) for g in self.groups])

    def __repr__(self) -> str:
        return (f"ItemPattern(grids={self.grids}, segments={self.segments}, written={self.written}, "
                f"read={self.read}, length={self.length}, blocks={self.num_blocks})")
