"""Generation for `UnifiedModel`: any item after any prompt (`generate`), text about any item
(`describe`), and the image wrappers `generate_image`, `caption`, `answer`.

An item is written segment by segment (frames, chunks), each segment scale by scale through hart_core's
one scale loop, with a KV cache and classifier-free guidance by a batched unconditional stream (the
same item after an empty prompt). Segments given by the caller (continuation) are fed as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hart_core.quantizer import HybridTokens
from hart_core.sampling import RowGenerators, sample_tokens
from hart_core.scale_loop import ScaleSampling, sample_scales

from .sequence import Part
from .session import DecodingSession, ItemCursor

# callback(scale, num_scales, preview): the current segment decoded after each of its scales
PreviewFn = Callable[[int, int, torch.Tensor], None]


class GenerationMixin:
    """Mixed into `UnifiedModel`; uses its codecs, heads, text tokenizer, builder and `row`."""

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str] | None = None,
        *,
        modality: str = "image",
        segments: int = 1,
        given: Sequence[HybridTokens] | None = None,
        prefix: Sequence[torch.Tensor] | None = None,
        cfg: float | None = None,
        top_k: int | None = None,
        top_p: float = 0.0,
        seed: int | Sequence[int] | None = 0,
        use_residual: bool = True,
        callback: PreviewFn | None = None,
        return_tokens: bool = False,
        then_text: int = 0,
        use_cache: bool = True,
    ):
        """Write one item of `segments` segments after each prompt; returns the codec's decode of all of
        them ([B, ...] for one segment, [B, segments, ...] for more).

        prompts: None or "" for an unconditional item (e.g. a plain continuation).
        given: per row, the first segments (a HybridTokens with one row per segment), which the model
        continues from: frame continuation, audio continuation, image-to-video.
        prefix: codes of the first scales of the first written segment (Long [B, n_k] each): a coarse
        layout to complete, or the truth when measuring which scales a model gets wrong.
        cfg / top_k: None uses the modality's defaults (its HeadConfig's default_cfg / default_top_k).
        seed: one seed for the batch, or one per row: then every row draws what it would draw alone with
        its seed (batching independent requests keeps each one reproducible).
        return_tokens: also return per row a HybridTokens of all its segments (given ones included).
        then_text: after the item, its end special and then up to this many tokens of text the model
        writes about it in the same sequence (greedy), returned last.
        """
        head_cfg = self.config.head(modality)
        sampling = ScaleSampling(head_cfg.default_cfg if cfg is None else cfg,
                                 head_cfg.default_top_k if top_k is None else top_k, top_p,
                                 use_residual=use_residual)
        codec = self.codecs[modality]
        if isinstance(prompts, str):
            prompts = [prompts]
        B = len(prompts) if prompts is not None else len(given or ())
        if B == 0:
            raise ValueError("nothing to generate: give prompts, or given segments to continue")
        prompts = list(prompts) if prompts is not None else [""] * B
        given = list(given) if given is not None else []
        if given and len(given) != B:
            raise ValueError(f"{B} prompts but {len(given)} given items")
        k = given[0].batch_size if given else 0
        if any(g.batch_size != k for g in given):
            raise ValueError("every row must give the same number of segments")
        if not k < segments:
            raise ValueError(f"{k} segments given, nothing left to write of {segments}")
        gen = self._generator(seed, B)
        rows = [self.row("text_to_item", None, p or None, modality=modality) for p in prompts]
        rows += [self.row("text_to_item", None, None, modality=modality) for _ in prompts]
        # text written after the item reads its last segment whole too
        pattern = self.builder.pattern(modality, segments, written=True, read=bool(then_text))
        session = DecodingSession(self, self.builder.build(rows, pad_side="left").to(self.device),
                                  reserve=pattern.length + 1 + then_text, use_cache=use_cache)
        cursor = session.open_item(pattern)
        written = [t.to(self.device) for t in given]
        latents: list[torch.Tensor] = [self._feed_given(session, cursor, modality, written)] if k else []
        segment_tokens: list[HybridTokens] = []
        for s in range(k, segments):
            f_hat, tokens = self._write_segment(session, cursor, modality, s, B, sampling,
                                                prefix if s == k else None, gen, callback)
            latents.append(f_hat[:, None])
            segment_tokens.append(tokens)
        session.close_item(cursor)
        out = codec.decode_latent(torch.cat(latents, dim=1).flatten(0, 1))  # [B * segments, ...]
        results = [out if segments == 1 else out.unflatten(0, (B, segments))]
        if return_tokens:
            items = []
            for b in range(B):
                new = [t.select(slice(b, b + 1)) for t in segment_tokens]
                items.append(HybridTokens.concat([written[b], *new] if k else new))
            results.append(items)
        if then_text:
            end = self._specials[modality].end
            session.feed_text(torch.full((2 * B, 1), end, dtype=torch.long, device=self.device))
            results.append(self.write_text(session, then_text)[:B])
        return results[0] if len(results) == 1 else tuple(results)

    def _feed_given(self, session: DecodingSession, cursor: ItemCursor, modality: str,
                    given: list[HybridTokens]) -> torch.Tensor:
        """Teacher-force every row's given segments into both CFG streams; returns their latents
        [B, k, C, *G]."""
        codec, pattern = self.codecs[modality], cursor.pattern
        tokens, k = HybridTokens.concat(given), given[0].batch_size  # rows: row 0's segments, row 1's, ...
        inputs = self.segment_inputs(modality, tokens).unflatten(0, (-1, k))  # [B, k, ladder + G, D]
        groups = [g for g in pattern.groups if g.segment < k]
        embeds = torch.cat([inputs[:, g.segment, g.ladder_offset : g.ladder_offset + g.size] for g in groups], 1)
        session.feed_groups(cursor, groups, embeds.repeat(2, 1, 1))
        return codec.fhat(tokens, with_residual=tokens.residual is not None).unflatten(0, (-1, k))

    def _write_segment(self, session, cursor, modality, s, B, sampling, prefix, gen, callback):
        codec, head, pattern = self.codecs[modality], self.heads[modality], cursor.pattern
        K = codec.num_scales

        def step(si: int, x: torch.Tensor | None) -> torch.Tensor:
            group = pattern.group(s, si)
            return session.feed_groups(cursor, [group], head.embed(si, x, 2 * B, group.size))

        drawn = {}

        def residual(hidden: torch.Tensor, codes: torch.Tensor, guidance: float) -> torch.Tensor:
            z = head.diffusion_condition(hidden, codes).flatten(0, 1)
            noise_fn = None
            if isinstance(gen, RowGenerators):  # z is [stream][row][cell]: each row's cells draw together
                n = z.shape[0] // (2 * B)

                def noise_fn(shape):
                    return gen.randn(shape, n, device=z.device, dtype=z.dtype)
            drawn["residual"] = head.diffusion.sample(z, cfg=guidance, generator=None if noise_fn else gen,
                                                      noise_fn=noise_fn)
            return drawn["residual"]

        on_scale = None
        if callback is not None:
            def on_scale(si: int, f_hat: torch.Tensor) -> None:
                callback(si, K, codec.decode_latent(f_hat))

        prefix = list(prefix or [])
        for i, p in enumerate(prefix):
            if i < K and tuple(p.shape) != (B, codec.tokens_per_scale[i]):
                raise ValueError(f"prefix[{i}] has shape {tuple(p.shape)}, expected {(B, codec.tokens_per_scale[i])}")
        f_hat, indices = sample_scales(codec.quantizer, codec.grids, B, step,
                                       lambda hidden: head.logits(hidden, codec.codebook), residual, sampling,
                                       prefix=prefix, generator=gen, on_scale=on_scale)
        if pattern.has_complete(s):  # a later segment or text reads this one whole
            group = pattern.group(s, K)
            latent = codec.latent_to_tokens(f_hat).repeat(2, 1, 1)
            session.feed_groups(cursor, [group], head.embed(K, latent, 2 * B, group.size))
        n = codec.tokens_per_scale[-1]
        res = drawn["residual"][: B * n].view(B, n, -1) if "residual" in drawn else None
        return f_hat, HybridTokens(indices, res, codec.grids)

    # -- text ------------------------------------------------------------------------------------

    @torch.no_grad()
    def describe(self, items, *, modality: str = "image", question: str | Sequence[str] | None = None,
                 max_new_tokens: int = 32, temperature: float = 0.0, top_k: int = 0, top_p: float = 0.0,
                 seed: int | Sequence[int] | None = 0, use_cache: bool = True) -> list[str]:
        """Text about each item: its caption, or the answer to `question` (one, or one per item).

        items: what the codec's `encode_items` takes (images, clips, ...), a HybridTokens (each row
        a single-segment item), or a list of HybridTokens, one per item with its segments as rows."""
        tokens = self._items(items, modality)
        if question is None:
            rows = [self.row("describe", t, modality=modality) for t in tokens]
        else:
            questions = [question] * len(tokens) if isinstance(question, str) else list(question)
            if len(questions) != len(tokens):
                raise ValueError(f"{len(tokens)} items but {len(questions)} questions")
            rows = [self.row("qa", t, question=q, modality=modality) for t, q in zip(tokens, questions, strict=True)]
        return self._write_text(rows, max_new_tokens, temperature, top_k, top_p, seed, use_cache)

    def _items(self, items, modality: str) -> list[HybridTokens]:
        if isinstance(items, HybridTokens):
            return [t.to(self.device) for t in items.rows()]
        if isinstance(items, (list, tuple)) and items and all(isinstance(t, HybridTokens) for t in items):
            return [t.to(self.device) for t in items]
        return [t.to(self.device) for t in self.codecs[modality].encode_items(items)]

    def _write_text(self, rows: list[list[Part]], max_new_tokens, temperature, top_k, top_p, seed,
                    use_cache) -> list[str]:
        gen = self._generator(seed, len(rows))
        session = DecodingSession(self, self.builder.build(rows, pad_side="left").to(self.device),
                                  reserve=max_new_tokens, use_cache=use_cache)
        return self.write_text(session, max_new_tokens, temperature, top_k, top_p, gen)

    def write_text(self, session: DecodingSession, max_new_tokens: int, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 0.0, generator: torch.Generator | RowGenerators | None = None
                   ) -> list[str]:
        """Continue every row of a session with text until <eos> (greedy at temperature 0)."""
        B, eos = session.batch_size, self.special("<eos>")
        hidden = session.hidden[:, -1:]
        out = torch.full((B, 0), eos, dtype=torch.long, device=self.device)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for step in range(max_new_tokens):
            logits = self.backbone.lm_head(hidden).float()
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                nxt, _ = sample_tokens(logits / temperature, top_k, top_p, generator)
            nxt = torch.where(done[:, None], torch.full_like(nxt, eos), nxt)
            out = torch.cat((out, nxt), dim=1)
            done |= nxt[:, 0] == eos
            if done.all() or step == max_new_tokens - 1:
                break
            hidden = session.feed_text(nxt)
        texts = []
        for row in out.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            texts.append(self.text.decode(row))
        return texts

    # -- images: thin wrappers -------------------------------------------------------------------

    def generate_image(self, prompts: Sequence[str], *, modality: str = "image",
                       prefix: Sequence[torch.Tensor] | None = None, return_tokens: bool = False, **kwargs):
        """Images [B, 3, H, W] in [0, 1]; `generate` with one segment. return_tokens gives the codes
        per scale ([B, n_k] each) with the images."""
        if isinstance(prompts, str):
            prompts = [prompts]
        for p in prompts:
            self.encode_text(p, "prompt")  # an image needs a prompt; an empty one is an error here
        out = self.generate(prompts, modality=modality, prefix=prefix, return_tokens=return_tokens, **kwargs)
        if not return_tokens:
            return out
        images, items = out
        return images, HybridTokens.concat(items).indices

    def caption(self, images, *, modality: str = "image", **kwargs) -> list[str]:
        """Captions for a batch of images (anything the codec's `encode` accepts, or HybridTokens)."""
        return self.describe(images, modality=modality, **kwargs)

    def answer(self, images, questions: Sequence[str], *, max_new_tokens: int = 16, modality: str = "image",
               **kwargs) -> list[str]:
        if isinstance(questions, str):
            questions = [questions]
        return self.describe(images, modality=modality, question=list(questions), max_new_tokens=max_new_tokens,
                             **kwargs)

    # -- audio: thin wrappers --------------------------------------------------------------------

    def continue_audio(self, waves, seconds: float, *, prompts: Sequence[str] | None = None,
                       modality: str = "audio", **kwargs) -> torch.Tensor:
        """Each mono clip [N] (the codec's sample rate) continued by `seconds`: its whole chunks are given (a
        tail shorter than a chunk is dropped, as the model writes whole chunks), then new chunks are written.
        Returns [B, samples] of the given chunks (as the codec reconstructs them) followed by the new ones."""
        codec = self.codecs[modality]
        if isinstance(waves, torch.Tensor) and waves.dim() == 1:
            waves = [waves]
        waves = [torch.as_tensor(w) for w in waves]
        if seconds <= 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        whole = [codec.whole_chunks(w) for w in waves]
        if len({len(w) for w in whole}) > 1:
            raise ValueError("clips continued in one batch must hold the same number of whole chunks")
        given = codec.encode_items(whole)
        segments = given[0].batch_size + codec.segments_for(seconds)
        chunks = self.generate(prompts, modality=modality, segments=segments, given=given, **kwargs)
        return codec.join(chunks)

    def generate_audio(self, prompts: Sequence[str], seconds: float, *, modality: str = "audio",
                       **kwargs) -> torch.Tensor:
        """Audio [B, samples] for each prompt, `seconds` long rounded up to whole chunks."""
        codec = self.codecs[modality]
        chunks = self.generate(prompts, modality=modality, segments=codec.segments_for(seconds), **kwargs)
        return codec.join(chunks if chunks.dim() == 3 else chunks[:, None])

    def _generator(self, seed: int | Sequence[int] | None, rows: int) -> torch.Generator | RowGenerators:
        if isinstance(seed, Sequence):
            if len(seed) != rows:
                raise ValueError(f"{len(seed)} seeds for {rows} rows")
            return RowGenerators([self._generator(s, 1) for s in seed])
        gen = torch.Generator(self.device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(seed)
        return gen

