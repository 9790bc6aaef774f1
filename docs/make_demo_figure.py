"""Regenerate docs/demo.png (the README picture) from a unified model folder.

    python docs/make_demo_figure.py [MODEL_DIR]      (default: the shipped model)
"""

import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from modalities import ImageCodec
from unified import UnifiedModel

PROMPTS = [
    "a red circle in the top left",
    "a blue square in the center",
    "a green triangle at the bottom",
    "a purple circle to the left of a yellow square",
    "a cyan square above a red circle",
    "the digit 2",
    "the digit 5",
    "a handwritten 8",
]


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "recipes" / "pretrained" / "shapes"
    model = UnifiedModel.from_pretrained(folder).eval()
    steps: list[torch.Tensor] = []
    images = model.generate_image(PROMPTS, seed=0, callback=lambda k, n, img: steps.append(img))
    captions = model.caption(ImageCodec.to_pil(images), max_new_tokens=40)  # the images as shown (PNG pixels)
    label_h, cell = 52, 32 * 4
    K = len(steps)
    sheet = Image.new("RGB", (cell * K + 8, (cell + label_h) * len(PROMPTS)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, caption) in enumerate(zip(PROMPTS, captions, strict=True)):
        y = i * (cell + label_h)
        for k, s in enumerate(steps):  # coarse-to-fine previews, then the final image
            tile = ImageCodec.to_pil(s[i : i + 1])[0]
            sheet.paste(tile.resize((cell, cell), Image.NEAREST), (k * cell + (8 if k == K - 1 else 0), y))
        draw.text((4, y + cell + 4), f"prompt: {prompt}", fill="black")
        draw.text((4, y + cell + 20), f"model's caption of its image: {caption}", fill=(0, 90, 0))
    out = Path(__file__).parent / "demo.png"
    sheet.save(out)
    print(out)


if __name__ == "__main__":
    main()
