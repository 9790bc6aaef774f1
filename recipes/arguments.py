"""Argument types for the command lines: every value is checked when the arguments are parsed, before a
model is loaded, and a bad one is one line from argparse (exit status 2) instead of a traceback after the
work, or nonsense silently accepted (`--top-k -3`, `--cfg nan`, `--device cuda` on a machine without CUDA)."""

from __future__ import annotations

import argparse
import math

import torch


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def finite_float(text: str) -> float:
    value = _number(text, float)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return value


def probability(text: str) -> float:
    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def device(text: str) -> str:
    """A device this machine has: cpu, cuda[:N] (when CUDA is available and N exists) or mps."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here (torch {torch.__version__}); "
                                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: unsupported device type {dev.type!r} (cpu, cuda or mps)")
    return text


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def describe_error(e: BaseException) -> str:
    """The one line a user sees for a bad input: an OSError names its file and the reason, the rest say
    themselves (a library's several lines joined into one)."""
    if isinstance(e, OSError) and e.filename and e.strerror and str(e.filename) not in str(e.args[-1]):
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split())
