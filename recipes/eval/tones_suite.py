"""The "tones" evaluation suite: audio continuation, text-to-audio and audio captioning on Tone World melodies,
judged by `recipes.eval.tone_judge` (pitch by YIN, validated on clean melodies).

Two sets of clips: fresh melodies of the training pairs (indices past every training clip: unseen seeds) and
melodies of the held-out (timbre, pattern) pairs.

- continuation: the first `GIVEN_CHUNKS` chunks given, no prompt, the rest of the clip written; the pitch of
  every written note against the true continuation (within half a semitone) and the onset error (ms), also
  per pattern and tempo, each beside its ceiling (`continuation_ceiling`: what the best guess from the given
  notes gets right);
- t2a: audio for each clip's caption; the judge's pattern, timbre and tempo against the caption (overall: all);
- caption: the model's caption of the true clip is exactly its caption;
- speed: autoregressive steps per second of audio (a step per scale, and one to read a chunk whole for the
  next), and the real-time factor of continuation on this machine (seconds of compute per second of audio).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from recipes.data.tones import CLIP_SECONDS, TEMPOS, ToneWorld, continuation_ceiling, parse_caption

from .evaluate import VALIDATION_START, EvalContext, _batches, register_suite
from .tone_judge import describe_clip, judge_continuation

GIVEN_CHUNKS = 2
SETS = {"seen_pairs": ("train", VALIDATION_START), "heldout_pairs": ("heldout", 0)}


def _table(results: dict, which: str) -> list[tuple[str, object]]:
    rows = []
    for name in SETS:
        c, t = results[f"tones_continuation_{name}"], results[f"tones_t2a_{name}"]
        cap = results[f"tones_caption_{name}"]
        rows += [(f"Tone World continuation note accuracy ({name.replace('_', ' ')}) (ceiling) | onset error ms",
                  f"{c['note_accuracy']:.3f} ({c['ceiling']:.3f}) | {c['onset_error_ms']:.1f}"),
                 (f"Tone World text-to-audio overall ({name.replace('_', ' ')}): pattern / timbre / tempo",
                  f"{t['overall']:.3f}: {t['pattern']:.3f} / {t['timbre']:.3f} / {t['tempo']:.3f}"),
                 (f"Tone World audio captioning ({name.replace('_', ' ')})", cap["accuracy"])]
    s = results["audio_speed"]
    rows.append(("Audio speed: autoregressive steps per second of audio | real-time factor (continuation)",
                 f"{s['ar_steps_per_second']:.1f} | {s['real_time_factor']:.3f}"))
    return rows


@register_suite("tones", modalities=("audio",), table=_table)
def tones_suite(model, ctx: EvalContext) -> dict:
    codec = model.codecs["audio"]
    world = ToneWorld(seed=0, sample_rate=codec.sample_rate)
    total = codec.segments_for(CLIP_SECONDS)
    out: dict = {}
    given_seconds = GIVEN_CHUNKS * codec.chunk_seconds
    ceilings = {tempo: continuation_ceiling(tempo, given_seconds) for tempo in TEMPOS}  # {tempo: {pattern: ...}}
    t_audio, t_compute = 0.0, 0.0
    for name, (split, start) in SETS.items():
        clips = [world.sample(start + i, split) for i in range(ctx.n)]
        waves = [torch.from_numpy(s["audio"]) for s in clips]

        scores = []
        for i, b in enumerate(_batches(list(zip(clips, waves, strict=True)), ctx.batch_size)):
            given = codec.encode_items([w[: GIVEN_CHUNKS * codec.chunk] for _, w in b])
            t0 = time.perf_counter()
            chunks = model.generate(None, modality="audio", segments=total, given=given, cfg=ctx.cfg,
                                    top_k=ctx.top_k, seed=ctx.seed + i)
            t_compute += time.perf_counter() - t0
            t_audio += len(b) * (total - GIVEN_CHUNKS) * codec.chunk_seconds
            for (s, _), audio in zip(b, codec.join(chunks).float().cpu().numpy(), strict=True):
                scores.append(judge_continuation(audio, s, given_seconds, codec.sample_rate))
        kinds: dict[tuple[str, str], list[float]] = {}  # which rule fails: accuracy per pattern and tempo
        for s, r in zip(clips, scores, strict=True):
            kinds.setdefault((s["pattern"], s["tempo"]), []).append(r["note_accuracy"])
        out[f"tones_continuation_{name}"] = {
            "note_accuracy": float(np.mean([r["note_accuracy"] for r in scores])),
            # the best any model can do from the given notes (some beginnings fit two melodies)
            "ceiling": float(np.mean([ceilings[s["tempo"]][s["pattern"]] for s in clips])),
            "onset_error_ms": float(np.nanmean([r["onset_error_ms"] for r in scores])),
            "given_seconds": given_seconds, "n": len(scores),
            "by_pattern_and_tempo": {f"{pattern} {tempo}": {"note_accuracy": float(np.mean(v)), "n": len(v),
                                                            "ceiling": ceilings[tempo][pattern]}
                                     for (pattern, tempo), v in sorted(kinds.items())}}

        heard = []
        for i, b in enumerate(_batches(clips, ctx.batch_size)):
            audio = model.generate([s["caption"] for s in b], modality="audio", segments=total, cfg=ctx.cfg,
                                   top_k=ctx.top_k, seed=ctx.seed + 500 + i)
            heard += [describe_clip(a, codec.sample_rate) for a in codec.join(audio).float().cpu().numpy()]
        hits = {k: [h[k] == s[k] for h, s in zip(heard, clips, strict=True)] for k in ("pattern", "timbre", "tempo")}
        out[f"tones_t2a_{name}"] = {k: float(np.mean(v)) for k, v in hits.items()} | {
            "overall": float(np.mean([all(x) for x in zip(*hits.values(), strict=True)])), "n": len(clips)}

        captions = [c for b in _batches(waves, ctx.batch_size)
                    for c in model.describe(b, modality="audio", max_new_tokens=24)]
        out[f"tones_caption_{name}"] = {"accuracy": float(np.mean([_caption_right(c, s)
                                                                   for c, s in zip(captions, clips, strict=True)])),
                                        "n": len(clips)}
        ctx.examples += [{"clip": s["key"], "caption": c, "truth": s["caption"]}
                         for c, s in zip(captions[:2], clips[:2], strict=True)]
    steps = codec.num_scales + 1  # a step per scale, and one to read the chunk whole for the next
    out["audio_speed"] = {"ar_steps_per_second": steps / codec.chunk_seconds,
                          "real_time_factor": t_compute / max(t_audio, 1e-9), "chunk_seconds": codec.chunk_seconds,
                          "batch_size": ctx.batch_size, "device": str(model.device)}
    return out


def _caption_right(text: str, sample: dict) -> bool:
    try:
        return parse_caption(text) == {k: sample[k] for k in ("timbre", "pattern", "tempo")}
    except ValueError:
        return False
