"""An independent judge of Tone World audio: the pitch of every note, the onsets, and what a clip is
(pattern, timbre, tempo), from the waveform alone. It is validated on clean rendered melodies
(`tests/recipes/test_tones.py`: every note's pitch and every clip's description exact).

    detect_pitch(segment, 8000)                  # Hz (YIN), or None for silence / no clear period
    notes_on_grid(wave, 8000, 0.128)             # MIDI per note slot of a known tempo (None where unclear)
    describe_clip(wave, 8000)                    # {"tempo", "pattern", "timbre", "notes"}
    judge_continuation(wave, melody, 1.024, 8000)  # note accuracy and onset error after `from_seconds`
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from recipes.data.tones import INTERVALS, PATTERNS, TEMPOS, midi_to_hz, note_sequence, pattern_cycle

FMIN, FMAX = 100.0, 1500.0
YIN_THRESHOLD = 0.15


def detect_pitch(segment: np.ndarray, sample_rate: int, fmin: float = FMIN, fmax: float = FMAX) -> float | None:
    """Fundamental frequency of a segment by YIN (cumulative mean normalised difference), or None."""
    x = np.asarray(segment, dtype=np.float64)
    x = x - x.mean()
    if x.size < 4 or np.sqrt(np.mean(x**2)) < 1e-3:
        return None
    tau_min, tau_max = max(2, int(sample_rate / fmax)), min(len(x) // 2, int(sample_rate / fmin) + 1)
    if tau_max <= tau_min + 1:
        return None
    w = len(x) - tau_max
    diff = np.array([np.sum((x[:w] - x[tau:tau + w]) ** 2) for tau in range(tau_max + 1)])
    cmnd = np.ones_like(diff)
    running = np.cumsum(diff[1:])
    cmnd[1:] = diff[1:] * np.arange(1, tau_max + 1) / np.maximum(running, 1e-12)
    candidates = np.nonzero(cmnd[tau_min:tau_max] < YIN_THRESHOLD)[0]
    if len(candidates):
        tau = tau_min + int(candidates[0])
        while tau + 1 < tau_max and cmnd[tau + 1] < cmnd[tau]:
            tau += 1
    else:
        tau = tau_min + int(np.argmin(cmnd[tau_min:tau_max]))
        if cmnd[tau] > 0.4:
            return None
    if 0 < tau < tau_max:  # parabolic interpolation between lags
        a, b, c = cmnd[tau - 1], cmnd[tau], cmnd[tau + 1]
        denom = a - 2 * b + c
        tau = tau + (0.5 * (a - c) / denom if abs(denom) > 1e-12 else 0.0)
    return sample_rate / tau


def hz_to_midi(hz: float) -> float:
    return 69 + 12 * math.log2(hz / 440.0)


def _slot(wave: np.ndarray, sample_rate: int, start: float, seconds: float) -> np.ndarray:
    # the middle of a note: past its attack, before its fade
    a = int(round((start + 0.15 * seconds) * sample_rate))
    b = int(round((start + 0.85 * seconds) * sample_rate))
    return wave[a:b]


def notes_on_grid(wave: np.ndarray, sample_rate: int, note_seconds: float, start: float = 0.0,
                  count: int | None = None) -> list[float | None]:
    """MIDI pitch (float) of each note slot [start + k * note_seconds, ...) that fits in the wave."""
    fits = int((len(wave) / sample_rate - start) / note_seconds + 1e-9)
    count = fits if count is None else min(count, fits)
    out = []
    for k in range(count):
        hz = detect_pitch(_slot(wave, sample_rate, start + k * note_seconds, note_seconds), sample_rate)
        out.append(None if hz is None else hz_to_midi(hz))
    return out


def notes_right(heard: list[float | None], truth: list[int]) -> list[bool]:
    """Per note: heard within half a semitone of the true MIDI note."""
    return [h is not None and abs(h - t) < 0.5 for h, t in zip(heard, truth, strict=False)]


def _harmonics(segment: np.ndarray, sample_rate: int, f0: float, count: int = 3) -> list[float]:
    spectrum = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), n=8 * len(segment)))
    freqs = np.fft.rfftfreq(8 * len(segment), 1 / sample_rate)
    amps = []
    for k in range(1, count + 1):
        band = (freqs > k * f0 * 0.97) & (freqs < k * f0 * 1.03)
        amps.append(float(spectrum[band].max()) if band.any() and k * f0 < sample_rate / 2 else 0.0)
    return amps


def timbre_of(wave: np.ndarray, sample_rate: int, note_seconds: float, notes: list[float | None]) -> str | None:
    """sine / square / saw / plucked from the harmonics and decay of the notes heard (`notes_on_grid` of the
    same grid), by majority over them."""
    votes = []
    for k, note in enumerate(notes):
        if note is None:
            continue
        seg = _slot(wave, sample_rate, k * note_seconds, note_seconds)
        f0 = midi_to_hz(note)
        half = len(seg) // 2
        decay = np.sqrt(np.mean(seg[half:] ** 2)) / max(np.sqrt(np.mean(seg[:half] ** 2)), 1e-9)
        a1, a2, a3 = _harmonics(seg, sample_rate, f0)
        h2, h3 = a2 / max(a1, 1e-9), a3 / max(a1, 1e-9)
        if decay < 0.85:
            votes.append("plucked")
        elif h2 < 0.1 and h3 < 0.1:
            votes.append("sine")
        elif h2 < 0.15:
            votes.append("square")
        else:
            votes.append("saw")
    return Counter(votes).most_common(1)[0][0] if votes else None  # a tie goes to the first heard: same every run


def tempo_of(wave: np.ndarray, sample_rate: int) -> str:
    """The tempo whose note grid has a steady pitch inside each slot (slow notes also fill fast slots, so slow
    is tried first: fast notes change pitch in the middle of a slow slot)."""
    slow = TEMPOS["slow"]
    steady = []
    for k in range(int(len(wave) / sample_rate / slow + 1e-9)):
        first = detect_pitch(_slot(wave, sample_rate, k * slow, slow / 2), sample_rate)
        second = detect_pitch(_slot(wave, sample_rate, k * slow + slow / 2, slow / 2), sample_rate)
        steady.append(first is not None and second is not None and abs(hz_to_midi(first) - hz_to_midi(second)) < 0.5)
    return "slow" if steady and np.mean(steady) >= 0.5 else "fast"


def pattern_of(notes: list[float | None]) -> str | None:
    """The pattern whose sequence through the first note matches the most notes: every place in its cycle the
    first note may hold is tried (and, for alternating notes, every interval); ties go to the first tried."""
    if not notes or notes[0] is None:
        return None
    first, best, best_score = round(notes[0]), None, -1.0
    for pattern in PATTERNS:
        for interval in INTERVALS if pattern == "alternating" else (INTERVALS[0],):
            for phase, offset in enumerate(pattern_cycle(pattern, interval)):
                score = np.mean(notes_right(notes, note_sequence(pattern, first - offset, len(notes), interval, phase)))
                if score > best_score:
                    best, best_score = pattern, score
    return best


def describe_clip(wave: np.ndarray, sample_rate: int) -> dict:
    """What the judge hears: {"tempo", "pattern", "timbre", "notes"} (notes: MIDI per slot of that tempo)."""
    wave = np.asarray(wave, dtype=np.float64)
    tempo = tempo_of(wave, sample_rate)
    notes = notes_on_grid(wave, sample_rate, TEMPOS[tempo])
    return {"tempo": tempo, "pattern": pattern_of(notes), "timbre": timbre_of(wave, sample_rate, TEMPOS[tempo], notes),
            "notes": notes}


def onsets(wave: np.ndarray, sample_rate: int, hop: int = 64, n_fft: int = 256) -> np.ndarray:
    """Onset times (s): peaks of the positive spectral flux above a fraction of its maximum."""
    wave = np.asarray(wave, dtype=np.float64)
    frames = 1 + (len(wave) - n_fft) // hop
    if frames < 3:
        return np.zeros(0)
    window = np.hanning(n_fft)
    mags = np.abs(np.fft.rfft(np.stack([wave[i * hop:i * hop + n_fft] * window for i in range(frames)]), axis=1))
    flux = np.maximum(np.diff(np.log1p(10 * mags), axis=0), 0).sum(1)
    threshold = 0.3 * flux.max()
    peaks = [i for i in range(1, len(flux) - 1)
             if flux[i] >= threshold and flux[i] >= flux[i - 1] and flux[i] > flux[i + 1]]
    return (np.array(peaks) + 1) * hop / sample_rate + n_fft / 2 / sample_rate


def judge_continuation(wave: np.ndarray, melody: dict, from_seconds: float, sample_rate: int) -> dict:
    """Notes starting at or after `from_seconds`: pitch accuracy (within half a semitone of the truth) and
    the mean distance (ms) from each true onset to the nearest detected onset."""
    wave = np.asarray(wave, dtype=np.float64)
    step = melody["note_seconds"]
    first = int(math.ceil(from_seconds / step - 1e-9))
    truth = melody["notes"][first:]
    heard = notes_on_grid(wave, sample_rate, step, first * step, len(truth))
    correct = notes_right(heard, truth)
    found = onsets(wave, sample_rate)
    true_onsets = [first * step + k * step for k in range(len(heard))][1:]  # the first may sit on a chunk edge
    errors = [float(np.abs(found - t).min()) * 1000 for t in true_onsets if len(found)]
    return {"note_accuracy": float(np.mean(correct)) if correct else 0.0, "notes": len(correct),
            "onset_error_ms": float(np.mean(errors)) if errors else float("nan")}
