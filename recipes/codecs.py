"""The codecs a unified recipe names, one per modality, and the heads that go with them.

    model:
      codecs:
        image: tokenizer/final                     # a codec folder (codec.json), "debug", or (images
                                                   # and video) a released HART tokenizer folder
        video: tokenizer/final                     # an image codec: each frame is coded with it
        audio: {codec: debug, head: {diff_width: 64, default_cfg: 1.0}}

The legacy form, `model.codec` + `model.head`, means `{image: {codec, head}}`. A model-level
`default_cfg` / `default_top_k` is the default of every head (a head's own setting wins).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from modalities import ImageCodec, ModalityCodec, VideoCodec, load_codec

SPEC_KEYS = ("codec", "head")
HEAD_DEFAULTS = ("default_cfg", "default_top_k")  # may stand at the model level, for every head


@dataclass
class CodecSpec:
    """One modality of a recipe: where its codec comes from and its HeadConfig fields."""

    modality: str
    codec: str
    head: dict = field(default_factory=dict)


def codec_specs(model: Mapping) -> list[CodecSpec]:
    """The recipe's `model.codecs` (or legacy `model.codec` + `model.head`) as specs, in the recipe's order."""
    defaults = {k: model[k] for k in HEAD_DEFAULTS if k in model}
    if "codecs" in model:
        legacy = [k for k in ("codec", "head") if k in model]
        if legacy:
            raise ValueError(f"model.codecs replaces model.{' and model.'.join(legacy)}: give one form, not both")
        entries = model["codecs"]
        if not isinstance(entries, Mapping) or not entries:
            raise ValueError(f"model.codecs must map modality names to codec specs, got {entries!r}")
    else:
        entries = {"image": {"codec": model.get("codec", "debug"), "head": model.get("head") or {}}}
    specs = []
    for name, entry in entries.items():
        if isinstance(entry, (str, os.PathLike)):
            entry = {"codec": os.fspath(entry)}
        if not isinstance(entry, Mapping) or "codec" not in entry:
            raise ValueError(f"model.codecs.{name} must be a codec spec (a string) or {{codec: spec, head: {{...}}}}, "
                             f"got {entry!r}")
        unknown = set(entry) - set(SPEC_KEYS)
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in model.codecs.{name} (known: {', '.join(SPEC_KEYS)})")
        head = dict(entry.get("head") or {})
        if head.get("modality", name) != name:
            raise ValueError(f"model.codecs.{name}.head names modality {head['modality']!r}")
        head.pop("modality", None)
        specs.append(CodecSpec(str(name), os.fspath(entry["codec"]), {**defaults, **head}))
    return specs


def make_codec(spec: CodecSpec, seed: int, image_size: int) -> ModalityCodec:
    """The codec a spec names: "debug" (a tiny random one: the image codec for images and, frame by frame,
    for video; an 8 kHz audio codec for audio; a latent codec for any other modality), a codec folder, or for
    images and video a released HART tokenizer folder. Video given an image codec (folder) codes each frame
    with it."""
    frames = spec.modality in ("image", "video")
    if spec.codec == "debug":
        if frames:
            from modalities import debug_image_codec

            codec = debug_image_codec(seed, image_size=image_size)
        elif spec.modality == "audio":
            from modalities.audio import debug_audio_codec

            return debug_audio_codec(seed)
        else:
            from modalities import debug_latent_codec

            return debug_latent_codec(seed=seed, name=spec.modality)
    elif (Path(spec.codec) / "codec.json").is_file():
        codec = load_codec(spec.codec)
    elif frames:
        codec = ImageCodec.from_official(spec.codec)
    else:
        raise FileNotFoundError(f"model.codecs.{spec.modality}: {spec.codec} is not a codec folder (no codec.json)")
    if spec.modality == "video" and isinstance(codec, ImageCodec):
        codec = VideoCodec(codec)
    return codec


def codec_folder(artifacts: Path, modality: str) -> Path:
    """Where a run keeps a modality's codec: artifacts/codecs/NAME (runs from before named codecs kept
    their one image codec in artifacts/codec)."""
    folder = artifacts / "codecs" / modality
    old = artifacts / "codec"
    if modality == "image" and not folder.is_dir() and (old / "codec.json").is_file():
        return old
    return folder
