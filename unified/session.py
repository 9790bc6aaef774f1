"""A decoding session: the state of incremental decoding over a batch of rows.

It holds where each row stands (the next text position and attention block) and the backbone's KV
cache, or, to check the cache, the whole sequence so far (every step reruns it). The cache grows with
every step, or, with `model.cache_implementation == "static"`, is allocated once for the prompt and the
reserved positions; then every mask spans all of it, with the positions not yet written masked out. Text is fed a token
at a time (a block each); an item is fed group by group through an `ItemCursor`, whose positions and
blocks come from the item's pattern; closing the item moves the row past it, so text or another item
can follow a generated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .pattern import Group, ItemPattern
from .sequence import SequenceBatch, attention_mask

if TYPE_CHECKING:
    from .model import UnifiedModel


@dataclass
class ItemCursor:
    """An item being fed: its pattern, and where it starts in every row."""

    pattern: ItemPattern
    origin: torch.Tensor  # [B] float: the item's position origin p0
    first_block: torch.Tensor  # [B] long


class DecodingSession:
    def __init__(self, model: UnifiedModel, batch: SequenceBatch, reserve: int, use_cache: bool = True):
        length = batch.text_ids.shape[1]
        if length + reserve > model.config.max_length:
            raise ValueError(f"the prompt takes {length} positions and generation needs {reserve} more, beyond "
                             f"max_length {model.config.max_length}: shorten the prompt")
        self.model = model
        self.block, self.valid = batch.block, batch.valid
        self.next_position = batch.next_position.clone()
        self.next_block = batch.next_block.clone()
        self.embeds, self.positions = model.embed(batch), batch.positions
        static = use_cache and model.cache_implementation == "static"
        self.capacity = length + reserve if static else None
        self.cache = model.backbone.new_cache(self.capacity) if use_cache else None
        self.hidden = model.backbone(self.embeds, self.positions, self._span(batch.attention_mask()), self.cache)

    @property
    def batch_size(self) -> int:
        return self.block.shape[0]

    def feed(self, embeds: torch.Tensor, positions: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """Append positions: embeds [B, n, D], positions [B, n, 3], blocks [B, n] (absolute block ids).
        Returns their hidden states [B, n, D] (also kept as `self.hidden`)."""
        B, n = embeds.shape[:2]
        valid = torch.ones(B, n, dtype=torch.bool, device=embeds.device)
        self.block = torch.cat((self.block, blocks), dim=1)
        self.valid = torch.cat((self.valid, valid), dim=1)
        if self.cache is not None:
            mask = self._span(attention_mask(blocks, valid, self.block, self.valid))
            self.hidden = self.model.backbone(embeds, positions, mask, self.cache)
        else:
            self.embeds = torch.cat((self.embeds, embeds), dim=1)
            self.positions = torch.cat((self.positions, positions), dim=1)
            mask = attention_mask(self.block, self.valid, self.block, self.valid)
            self.hidden = self.model.backbone(self.embeds, self.positions, mask)[:, -n:]
        return self.hidden

    def _span(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask [B, n, K] over the K keys so far, widened to a static cache's capacity."""
        if self.capacity is None:
            return mask
        if mask.shape[2] > self.capacity:
            raise ValueError(f"the static cache holds {self.capacity} positions; this step needs {mask.shape[2]}")
        return torch.nn.functional.pad(mask, (0, self.capacity - mask.shape[2]), value=False)

    # -- text ----------------------------------------------------------------------------------

    def feed_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text tokens [B, n]: one position and one block each."""
        B, n = ids.shape
        device = self.block.device
        steps = torch.arange(n, device=device)
        positions = (self.next_position.to(device)[:, None] + steps[None]).float()[..., None].expand(B, n, 3)
        blocks = self.next_block.to(device)[:, None] + steps[None]
        self.next_position = self.next_position + n
        self.next_block = self.next_block + n
        return self.feed(self.model.backbone.embed_tokens(ids), positions, blocks)

    # -- items ---------------------------------------------------------------------------------

    def open_item(self, pattern: ItemPattern) -> ItemCursor:
        return ItemCursor(pattern, self.next_position.clone(), self.next_block.clone())

    def feed_groups(self, cursor: ItemCursor, groups: list[Group], embeds: torch.Tensor) -> torch.Tensor:
        """Groups of the open item, in pattern order, with their inputs embeds [B, sum of sizes, D]."""
        device = embeds.device
        rel_pos = torch.cat([cursor.pattern.group_positions(g) for g in groups]).to(device)
        rel_block = torch.cat([torch.full((g.size,), g.block, dtype=torch.long) for g in groups]).to(device)
        positions = rel_pos[None] + cursor.origin.to(device)[:, None, None]
        blocks = cursor.first_block.to(device)[:, None] + rel_block[None]
        return self.feed(embeds, positions, blocks)

    def close_item(self, cursor: ItemCursor) -> None:
        """Move every row past the item: what follows sees all of it."""
        self.next_position = cursor.origin + cursor.pattern.extent
        self.next_block = cursor.first_block + cursor.pattern.num_blocks
