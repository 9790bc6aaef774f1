import io
import json

import pytest
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def shape_png(colour: str, shape: str, size: int = 16) -> bytes:
    img = Image.new("RGB", (size, size), (245, 245, 245))
    d = ImageDraw.Draw(img)
    box = (3, 3, size - 4, size - 4)
    (d.ellipse if shape == "circle" else d.rectangle)(box, fill=COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_shape_shards(folder, n_shards: int = 2, per_shard: int = 8, corrupt: bool = False) -> str:
    """Webdataset shards of coloured shapes with captions and a question/answer; returns the pattern."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    i = 0
    for shard in range(n_shards):
        with wds.TarWriter(str(folder / f"shard-{shard:03d}.tar")) as sink:
            for _ in range(per_shard):
                colour, shape = combos[i % len(combos)]
                png = shape_png(colour, shape)
                if corrupt and i == 3:
                    png = b"\x89PNG garbage" * 8
                if corrupt and i == 9:
                    png = png[: len(png) // 2]
                sink.write({"__key__": f"s{i:05d}", "png": png, "txt": f"a {colour} {shape}",
                            "json": json.dumps({"question": "what shape is it", "answer": shape})})
                i += 1
    return str(folder / f"shard-{{000..{n_shards - 1:03d}}}.tar")


def write_moving_shards(folder, n: int) -> str:
    """Moving Shapes mp4 shards (n clips in one shard) plus a second shard holding a truncated clip that
    the training data path must skip and count; returns the two shards' pattern."""
    import webdataset as wds

    from recipes.data.moving_shapes import MovingShapesWorld

    MovingShapesWorld(seed=0, image_size=32, num_frames=8).write_shards(folder, "train", n=n, per_shard=n)
    good = (folder / "moving-train-000.tar").read_bytes()
    with wds.TarWriter(str(folder / "moving-train-001.tar"), mtime=0.0) as sink:
        sink.write({"__key__": "broken-clip", "mp4": good[2000:6000], "txt": "a red circle moving up"})
    return f"{folder}/moving-train-{{000..001}}.tar"


@pytest.fixture(scope="session")
def shape_shards(tmp_path_factory):
    return write_shape_shards(tmp_path_factory.mktemp("shapes"))


# a tiny unified image model saved to a folder, and an image file: for the command-line tests
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ..unified.test_unified import tiny_model

    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_model("qwen2").save_pretrained(folder)
    return folder


@pytest.fixture()
def image_file(tmp_path):
    from ..unified.test_unified import SHAPES, draw

    path = tmp_path / "circle.png"
    draw(*SHAPES["a red circle"]).save(path)
    return path

