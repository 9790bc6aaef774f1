"""Tone World: short melodies from known note sequences, so every note of every clip is known exactly.

    world = ToneWorld(seed=0)
    s = world.sample(3, "train")     # {"key", "audio": float32 [N] at 8 kHz, "caption", "question", "answer",
                                     #  "notes": [midi, ...], "onsets": [seconds, ...], "timbre", "pattern", "tempo"}
    pattern = world.write_shards("data/tones", "train", n=2000)    # KEY.wav (16-bit PCM), KEY.txt, KEY.json

* patterns whose continuation is predictable from the first second: a rising or falling major scale over
  one octave that starts again, a repeating arpeggio (root, third, fifth, octave), two alternating notes
  (an interval of 3, 4, 5 or 7 semitones); the pattern's base note (MIDI 48-72) is random, and so is where
  in its cycle a clip starts (a rising scale may begin on its fifth): 4,200 distinct training melodies
  (6,000 clips of seed 0 hold 3,104 of them, each at its own level);
* levels: each clip's peak is random in 0.35-0.75;
* timbres: sine, square and saw waves (band-limited: no harmonic above Nyquist) and a plucked string
  (harmonics that decay, the higher ones faster);
* tempos: fast (`TEMPOS`: 0.128 s a note) and slow (0.256 s), notes on a grid from t = 0;
* captions: "a rising scale on a square wave, fast"; questions: "what is playing?" -> "square wave",
  "is it fast or slow?" -> "fast", "what pattern is it?" -> "rising scale";
* held-out split: the (timbre, pattern) pairs in `HELDOUT_PAIRS` (one per timbre, 4 of 16) never occur in
  a training clip; every held-out clip has one.

Samples are pure functions of (seed, split, index), as in the Shapes World.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

from .shapes import SPLITS, VALIDATION_START, _check_split
from .shards import write_shards

SAMPLE_RATE = 8000
CLIP_SECONDS = 2.048  # 4 chunks of 4096 samples at 8 kHz
TIMBRES = {"sine": "sine wave", "square": "square wave", "saw": "saw wave", "plucked": "plucked string"}
PATTERNS = {"rising": "rising scale", "falling": "falling scale", "arpeggio": "repeating arpeggio",
            "alternating": "pair of alternating notes"}
TEMPOS = {"fast": 0.128, "slow": 0.256}  # seconds per note
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("sine", "falling"), ("square", "arpeggio"), ("saw", "alternating"), ("plucked", "rising")})
ALL_PAIRS = tuple((t, p) for t in TIMBRES for p in PATTERNS)
TRAIN_PAIRS = tuple(pair for pair in ALL_PAIRS if pair not in HELDOUT_PAIRS)
MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11, 12)
ARPEGGIO = (0, 4, 7, 12)
INTERVALS = (3, 4, 5, 7)
LOWEST, HIGHEST = 48, 72  # first notes; the highest note is HIGHEST + 12
PEAK = 0.6  # the default level of `render`
PEAKS = (0.35, 0.75)  # a clip's level is drawn from this range


def pattern_cycle(pattern: str, interval: int = 4) -> tuple[int, ...]:
    """One cycle of a pattern in semitones above its base note."""
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r} (known: {', '.join(PATTERNS)})")
    return {"rising": MAJOR_STEPS, "falling": tuple(reversed(MAJOR_STEPS)), "arpeggio": ARPEGGIO,
            "alternating": (0, interval)}[pattern]


def note_sequence(pattern: str, first: int, count: int, interval: int = 4, phase: int = 0) -> list[int]:
    """`count` MIDI notes of a pattern on base note `first` (and `interval` for alternating), starting at
    position `phase` of its cycle."""
    cycle = [first + s for s in pattern_cycle(pattern, interval)]
    return [cycle[(i + phase) % len(cycle)] for i in range(count)]


def midi_to_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def synthesize_note(timbre: str, note: int, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One note, float64 [seconds * sample_rate], with a short fade in and out (no clicks between notes)."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    f0 = midi_to_hz(note)
    ks = np.arange(1, int((sample_rate / 2 - 1) // f0) + 1)  # band-limited: every harmonic below Nyquist
    if timbre == "sine":
        amps, decay = np.array([1.0]), np.zeros(1)
        ks = ks[:1]
    elif timbre == "square":
        ks = ks[ks % 2 == 1]
        amps, decay = 1.0 / ks, np.zeros(len(ks))
    elif timbre == "saw":
        amps, decay = 1.0 / ks, np.zeros(len(ks))
    elif timbre == "plucked":
        amps, decay = 1.0 / ks, 6.0 + 4.0 * ks  # higher harmonics die faster
    else:
        raise ValueError(f"unknown timbre {timbre!r} (known: {', '.join(TIMBRES)})")
    wave = (amps[:, None] * np.exp(-decay[:, None] * t) * np.sin(2 * np.pi * f0 * ks[:, None] * t)).sum(0)
    fade = min(n // 2, int(0.005 * sample_rate))
    envelope = np.ones(n)
    envelope[:fade] = np.linspace(0, 1, fade)
    envelope[n - fade:] = np.linspace(1, 0, fade)
    return wave * envelope


def render(timbre: str, notes: list[int], note_seconds: float, sample_rate: int = SAMPLE_RATE,
           seconds: float = CLIP_SECONDS, peak: float = PEAK) -> np.ndarray:
    """Notes back to back from t = 0 -> float32 [seconds * sample_rate] with the given peak."""
    parts = [synthesize_note(timbre, n, note_seconds, sample_rate) for n in notes]
    wave = np.concatenate(parts)[: int(round(seconds * sample_rate))]
    return (wave * (peak / max(np.abs(wave).max(), 1e-9))).astype(np.float32)


def caption(timbre: str, pattern: str, tempo: str) -> str:
    return f"a {PATTERNS[pattern]} on a {TIMBRES[timbre]}, {tempo}"


def parse_caption(text: str) -> dict:
    """Inverse of `caption`: {"timbre", "pattern", "tempo"}; raises ValueError on anything else."""
    for t in TIMBRES:
        for p in PATTERNS:
            for tempo in TEMPOS:
                if text.strip() == caption(t, p, tempo):
                    return {"timbre": t, "pattern": p, "tempo": tempo}
    raise ValueError(f"not a Tone World caption: {text!r}")


def continuation_ceiling(tempo: str, given_seconds: float, seconds: float = CLIP_SECONDS) -> dict[str, float]:
    """Per pattern, the fraction of continued notes the best possible guess gets right from the notes heard in the
    first `given_seconds` (every base note, phase and interval as likely as the world draws them). Below 1.0
    where different melodies begin alike: 4 slow notes of a rising scale from its root (0 2 4 5) sound like
    its upper half (7 9 11 12), which goes on an octave lower, so slow scales top out at 0.91."""
    if tempo not in TEMPOS:
        raise ValueError(f"unknown tempo {tempo!r} (known: {', '.join(TEMPOS)})")
    count = int(np.ceil(seconds / TEMPOS[tempo] - 1e-9))
    given = int(round(given_seconds / TEMPOS[tempo]))
    if not 0 < given < count:
        raise ValueError(f"{given_seconds} s holds {given} of the {count} notes of a {tempo} clip")
    heard: dict[tuple, list[tuple[float, str, tuple]]] = {}  # the given notes -> (weight, pattern, the rest)
    bases = range(LOWEST, HIGHEST + 1)
    for pattern in PATTERNS:
        intervals = INTERVALS if pattern == "alternating" else INTERVALS[:1]  # the interval only moves alternation
        for interval in intervals:
            cycle = len(pattern_cycle(pattern, interval))
            for base in bases:
                for phase in range(cycle):
                    notes = tuple(note_sequence(pattern, base, count, interval, phase))
                    weight = 1.0 / (len(intervals) * len(bases) * cycle)
                    heard.setdefault(notes[:given], []).append((weight, pattern, notes[given:]))
    right = dict.fromkeys(PATTERNS, 0.0)
    for melodies in heard.values():
        guess = []  # note by note, the likeliest
        for j in range(count - given):
            votes: dict[int, float] = {}
            for weight, _, rest in melodies:
                votes[rest[j]] = votes.get(rest[j], 0.0) + weight
            guess.append(max(votes, key=votes.get))
        for weight, pattern, rest in melodies:
            right[pattern] += weight * float(np.mean([a == b for a, b in zip(rest, guess, strict=True)]))
    return right


class ToneWorld:
    def __init__(self, seed: int = 0, sample_rate: int = SAMPLE_RATE, seconds: float = CLIP_SECONDS):
        if sample_rate < 4000:
            raise ValueError(f"sample_rate must be >= 4000 (the highest note is ~1 kHz), got {sample_rate}")
        if seconds < 4 * max(TEMPOS.values()):
            raise ValueError(f"seconds must hold at least 4 slow notes ({4 * max(TEMPOS.values())} s), got {seconds}")
        self.seed, self.sample_rate, self.seconds = seed, sample_rate, seconds

    def __repr__(self) -> str:
        return f"ToneWorld(seed={self.seed}, sample_rate={self.sample_rate}, seconds={self.seconds})"

    def melody(self, i: int, split: str = "train") -> dict:
        """The ground truth of clip i: timbre, pattern, tempo, notes, onsets (no audio)."""
        _check_split(split)
        rng = np.random.default_rng([self.seed, SPLITS.index(split), int(i), 7])
        pool = TRAIN_PAIRS if split == "train" else tuple(sorted(HELDOUT_PAIRS))
        timbre, pattern = pool[int(rng.integers(len(pool)))]
        tempo = list(TEMPOS)[int(rng.integers(len(TEMPOS)))]
        first = int(rng.integers(LOWEST, HIGHEST + 1))
        interval = INTERVALS[int(rng.integers(len(INTERVALS)))]
        note_seconds = TEMPOS[tempo]
        count = int(np.ceil(self.seconds / note_seconds - 1e-9))
        phase = int(rng.integers(len(pattern_cycle(pattern, interval))))
        peak = float(rng.uniform(*PEAKS))
        notes = note_sequence(pattern, first, count, interval, phase)
        return {"timbre": timbre, "pattern": pattern, "tempo": tempo, "note_seconds": note_seconds,
                "notes": notes, "onsets": [k * note_seconds for k in range(count)], "phase": phase, "peak": peak}

    def sample(self, i: int, split: str = "train") -> dict:
        m = self.melody(i, split)
        rng = np.random.default_rng([self.seed, SPLITS.index(split), int(i), 1])
        question, answer = [("what is playing?", TIMBRES[m["timbre"]]), ("is it fast or slow?", m["tempo"]),
                            ("what pattern is it?", PATTERNS[m["pattern"]])][int(rng.integers(3))]
        audio = render(m["timbre"], m["notes"], m["note_seconds"], self.sample_rate, self.seconds, m["peak"])
        return {"key": f"tones-{split}-{i:07d}", "split": split, "index": i, "audio": audio,
                "sample_rate": self.sample_rate, "caption": caption(m["timbre"], m["pattern"], m["tempo"]),
                "question": question, "answer": answer, **m}

    def select(self, split: str = "train", n: int = 1000, start: int = 0, patterns: tuple[str, ...] | None = None,
               tempos: tuple[str, ...] | None = None, limit: int = VALIDATION_START) -> list[int]:
        """The first `n` clip indices >= `start` whose melody has one of `patterns` and one of `tempos`
        (None: any), all below `limit` (where the evaluation's fresh training-pair clips begin)."""
        _check_split(split)
        for name, chosen, known in (("pattern", patterns, PATTERNS), ("tempo", tempos, TEMPOS)):
            unknown = sorted(set(chosen or ()) - set(known))
            if unknown:
                raise ValueError(f"unknown {name} {', '.join(unknown)} (known: {', '.join(known)})")
        picked, i = [], start
        while len(picked) < n and i < limit:
            m = self.melody(i, split)
            if (patterns is None or m["pattern"] in patterns) and (tempos is None or m["tempo"] in tempos):
                picked.append(i)
            i += 1
        if len(picked) < n:
            raise ValueError(f"only {len(picked)} of {n} clips match below index {limit}")
        return picked

    def write_shards(self, folder: str | os.PathLike, split: str = "train", n: int = 1000,
                     per_shard: int = 1000, indices: list[int] | None = None, prefix: str | None = None) -> str:
        """Clips 0..n-1 (or `indices`) as webdataset tars `folder/PREFIX-NNN.tar` (default prefix tones-SPLIT):
        KEY.wav (16-bit PCM, read back through the audio decoder in training), KEY.txt (the caption), KEY.json
        (caption, question, answer, notes, ...)."""
        import soundfile

        _check_split(split)

        def record(i: int) -> dict:  # write_shards refuses n < 1
            s = self.sample(i, split)
            buf = io.BytesIO()
            soundfile.write(buf, s["audio"], self.sample_rate, format="WAV", subtype="PCM_16")
            meta = {k: s[k] for k in ("caption", "question", "answer", "timbre", "pattern", "tempo", "notes",
                                      "onsets", "note_seconds", "phase", "peak", "split", "index")}
            meta.update(seed=self.seed, sample_rate=self.sample_rate)
            return {"__key__": s["key"], "wav": buf.getvalue(), "txt": s["caption"], "json": json.dumps(meta)}

        items = range(n) if indices is None else indices
        return write_shards(folder, prefix or f"tones-{split}", items, per_shard, record)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m recipes.data.tones",
                                     description="Write Tone World melodies as webdataset shards of wav files.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("--n", type=int, default=1000, help="clips (default 1000)")
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0,
                        help="first clip index (default 0; training data must stay below the evaluation's "
                             f"fresh clips at {VALIDATION_START:,})")
    parser.add_argument("--patterns", help=f"only these patterns, comma-separated ({', '.join(PATTERNS)})")
    parser.add_argument("--tempos", help=f"only these tempos, comma-separated ({', '.join(TEMPOS)})")
    parser.add_argument("--prefix", help="shard name prefix (default tones-SPLIT)")
    args = parser.parse_args(argv)
    world = ToneWorld(args.seed)
    try:
        indices = world.select(args.split, args.n, args.start,
                               tuple(args.patterns.split(",")) if args.patterns else None,
                               tuple(args.tempos.split(",")) if args.tempos else None)
    except ValueError as e:
        parser.error(str(e))
    print(world.write_shards(args.out, args.split, args.n, args.per_shard, indices, args.prefix))


if __name__ == "__main__":
    main()
