"""`MixtureSource`: several sources sampled by weight (per-dataset / per-task sampling weights).

As a map-style source it is the concatenation of its parts (sample `bases[k] + j` is sample j of
part k; keys are `"<part name>/<part key>"`, so they stay unique across parts). The loader
does not shuffle it with an epoch permutation: it asks `order(seed)` for a `MixtureOrder`
(see `recipes.data.order`), which deals positions to parts by weight and then walks each
part's own permutations.
"""

from __future__ import annotations

from collections.abc import Sequence

from .order import MixtureOrder, normalise_weights
from .sources import Source, _check_index


class MixtureSource:
    def __init__(self, sources: Sequence[Source], weights: Sequence[float], name: str = "mix",
                 block: int | None = None):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        if len(sources) != len(weights):
            raise ValueError(f"{len(sources)} sources for {len(weights)} weights")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture sources must have distinct names (they prefix keys), got {names}; "
                             "give them names, e.g. {'source': ..., 'weight': ..., 'name': 'coco'}")
        self.sources = list(sources)
        self.weights = normalise_weights(weights)
        self.name = name
        self.block = block
        self.lengths = [len(s) for s in self.sources]
        self.bases = [sum(self.lengths[:k]) for k in range(len(self.lengths))]
        self._total = sum(self.lengths)

    def __len__(self) -> int:
        return self._total

    def locate(self, i: int) -> tuple[int, int]:
        """Mixture sample i -> (part k, sample j of part k)."""
        i = _check_index(i, self._total)
        k = next(k for k in range(len(self.bases) - 1, -1, -1) if i >= self.bases[k])
        return k, i - self.bases[k]

    def source_of(self, i: int) -> int:
        return self.locate(i)[0]

    def key(self, i: int) -> str:
        k, j = self.locate(i)
        return f"{self.sources[k].name}/{self.sources[k].key(j)}"

    def raw(self, i: int) -> dict:
        k, j = self.locate(i)
        raw = dict(self.sources[k].raw(j))
        raw["__key__"] = f"{self.sources[k].name}/{raw['__key__']}"
        raw["__source__"] = self.sources[k].name
        return raw

    def order(self, seed: int) -> MixtureOrder:
        return MixtureOrder(self.lengths, self.weights, seed, self.block)

    def describe(self) -> dict:
        return {"type": "mix", "name": self.name, "samples": len(self),
                "parts": [{"name": s.name, "weight": w, "samples": n}
                          for s, w, n in zip(self.sources, self.weights, self.lengths, strict=True)]}

    def __repr__(self) -> str:
        parts = ", ".join(f"{s.name}:{w:.3g}" for s, w in zip(self.sources, self.weights, strict=True))
        return f"MixtureSource({parts})"
