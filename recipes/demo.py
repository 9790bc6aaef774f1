"""`hart-unified demo`: a handful of prompts end to end, written to a folder with an index.html: for an
image model the images (with their coarse-to-fine strips) and the model's own caption of each; for a
video model the clips (GIFs, shown inline) and the model's own description of each."""

from __future__ import annotations

import html
from pathlib import Path

import torch

DEMO_PROMPTS = [
    "a red circle in the top left",
    "a blue square in the center",
    "a green triangle at the bottom",
    "a yellow circle in the top right and a purple square at the bottom",
    "the digit 3",
    "the digit 7",
]
DEMO_VIDEO_PROMPTS = [
    "a red circle moving right",
    "a blue square moving up",
    "a green triangle moving left and a yellow circle moving down",
    "a purple square moving down",
]
ZOOM = 4  # small synthetic frames, shown 4x with nearest-neighbour pixels


def _zoom(images: torch.Tensor) -> torch.Tensor:
    return images.repeat_interleave(ZOOM, dim=-1).repeat_interleave(ZOOM, dim=-2)


def image_rows(model, out: Path, prompts: list[str], cfg: float | None, seed: int) -> list[str]:
    from modalities import ImageCodec

    steps: list[torch.Tensor] = []
    images = model.generate_image(prompts, cfg=cfg, seed=seed, callback=lambda k, n, img: steps.append(img.cpu()))
    captions = model.describe(images, modality="image", max_new_tokens=24)
    rows = []
    for i, (prompt, caption) in enumerate(zip(prompts, captions, strict=True)):
        ImageCodec.to_pil(_zoom(images[i : i + 1].cpu()))[0].save(out / f"{i:02d}.png")
        ImageCodec.to_pil(_zoom(torch.cat([s[i] for s in steps], dim=2)[None]))[0].save(out / f"{i:02d}_scales.png")
        rows.append(f"<tr><td>{html.escape(prompt)}</td><td><img src='{i:02d}.png'></td>"
                    f"<td><img src='{i:02d}_scales.png'></td><td>{html.escape(caption)}</td></tr>")
        print(f"{prompt!r} -> {out / f'{i:02d}.png'} -> caption {caption!r}")
    return ["<tr><th>prompt</th><th>image</th><th>scales, coarse to fine</th><th>the model's caption of it</th></tr>",
            *rows]


def video_rows(model, out: Path, prompts: list[str], cfg: float | None, seed: int, frames: int) -> list[str]:
    from modalities import write_video
    from modalities.video_write import as_uint8_frames

    clips = model.generate(prompts, modality="video", segments=frames, cfg=cfg, seed=seed).cpu()
    texts = model.describe([torch.from_numpy(as_uint8_frames(c)) for c in clips], modality="video",
                           max_new_tokens=40)
    rows = []
    for i, (prompt, clip, text) in enumerate(zip(prompts, clips, texts, strict=True)):
        write_video(out / f"clip{i:02d}.gif", _zoom(clip), fps=4)
        write_video(out / f"clip{i:02d}.mp4", clip, fps=4)
        rows.append(f"<tr><td>{html.escape(prompt)}</td><td><img src='clip{i:02d}.gif'></td>"
                    f"<td>{html.escape(text)}</td></tr>")
        print(f"{prompt!r} -> {out / f'clip{i:02d}.gif'} -> description {text!r}")
    return ["<tr><th>prompt</th><th>clip</th><th>the model's description of it</th></tr>", *rows]


def run_demo(model, out: str | Path, prompts: list[str] | None = None, cfg: float | None = None, seed: int = 0,
             frames: int = 4) -> Path:
    """Write the demo folder; returns its index.html."""
    if "image" not in model.codecs and "video" not in model.codecs:
        raise ValueError(f"the demo shows images or video; this model has: {', '.join(model.codecs)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    if "image" in model.codecs:
        sections.append(("images", image_rows(model, out, prompts or DEMO_PROMPTS, cfg, seed)))
    if "video" in model.codecs:
        sections.append(("video", video_rows(model, out, prompts or DEMO_VIDEO_PROMPTS, cfg, seed, frames)))
    body = "".join(f"<h2>{name}</h2><table border=1 cellpadding=6>{''.join(rows)}</table>" for name, rows in sections)
    index = out / "index.html"
    index.write_text(f"<html><body><h1>hart-unified demo</h1>{body}</body></html>\n")
    return index
