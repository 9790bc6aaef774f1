"""How well an audio codec reconstructs Tone World clips, by its discrete codes alone and by codes + the
continuous residual (the same codebook budget): SI-SDR, multi-resolution mel distance, and the fraction of
notes whose pitch the judge still hears right.

    python -m recipes.eval.audio_codec CODEC_DIR [--n 100] [--split train|heldout] [--out codec_eval.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from modalities import load_codec
from modalities.audio import AudioCodec
from modalities.audio_metrics import mel_distance, si_sdr

from ..data.tones import SPLITS, ToneWorld
from .tone_judge import notes_on_grid, notes_right

PATHS = ("hybrid", "discrete")


def note_accuracy(wave: np.ndarray, melody: dict, sample_rate: int) -> float:
    heard = notes_on_grid(wave, sample_rate, melody["note_seconds"], 0.0, len(melody["notes"]))
    return float(np.mean(notes_right(heard, melody["notes"])))


@torch.no_grad()
def evaluate_codec(codec: AudioCodec, n: int = 100, split: str = "train", seed: int = 1000,
                   progress: bool = False) -> dict:
    """Mean SI-SDR (dB), mel distance and note accuracy of both paths over n clips (world seed `seed`, so the
    clips are not the training shards' unless asked)."""
    world = ToneWorld(seed=seed, sample_rate=codec.sample_rate)
    scores: dict[str, dict[str, list[float]]] = {p: {"si_sdr": [], "mel": [], "notes": []} for p in PATHS}
    reference = []
    for i in tqdm(range(n), desc=f"codec on {split}", disable=not progress):
        s = world.sample(i, split)
        wave = torch.from_numpy(s["audio"])
        tokens = codec.encode(wave)
        reference.append(note_accuracy(s["audio"], s, codec.sample_rate))
        for path in PATHS:
            out = codec.join(codec.decode(tokens, with_residual=path == "hybrid")).float().cpu()[: len(wave)]
            scores[path]["si_sdr"].append(float(si_sdr(out, wave)))
            scores[path]["mel"].append(float(mel_distance(out, wave, codec.sample_rate)))
            scores[path]["notes"].append(note_accuracy(out.numpy(), s, codec.sample_rate))
    result = {"n": n, "split": split, "seed": seed, "reference_note_accuracy": float(np.mean(reference))}
    for path in PATHS:
        result[path] = {k: float(np.mean(v)) for k, v in scores[path].items()}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m recipes.eval.audio_codec", description=__doc__.split("\n\n")[0])
    parser.add_argument("codec", help="an audio codec folder (codec.json)")
    parser.add_argument("--n", type=int, default=100, help="clips per split (default 100)")
    parser.add_argument("--split", choices=(*SPLITS, "both"), default="both")
    parser.add_argument("--seed", type=int, default=1000, help="Tone World seed (default 1000: unseen clips)")
    parser.add_argument("--out", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    codec = load_codec(args.codec)
    if not isinstance(codec, AudioCodec):
        parser.error(f"{args.codec} holds a {type(codec).__name__}, not an audio codec")
    splits = SPLITS if args.split == "both" else (args.split,)
    results = {split: evaluate_codec(codec, args.n, split, args.seed, progress=True) for split in splits}
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
