"""`hart-unified serve` (recipes/serve) on the shipped default model: the OpenAI-style and streamed
endpoints give what `generate` gives for the seed, batched requests equal one-at-a-time ones, bad requests
get 4xx JSON errors while the server goes on serving, and a full queue answers 503."""

import asyncio
import base64
import io
import json
import struct
import threading
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from modalities import ImageCodec  # noqa: E402
from recipes.cli import DEFAULT_MODEL, build_parser  # noqa: E402
from recipes.serve.app import create_app  # noqa: E402
from recipes.serve.run import settings_from_args  # noqa: E402
from recipes.serve.settings import ServeSettings  # noqa: E402

PROMPT = "a red circle in the top left"


@pytest.fixture(scope="module")
def model():
    from unified import UnifiedModel

    return UnifiedModel.from_pretrained(DEFAULT_MODEL).eval()


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model, ServeSettings(max_upload_bytes=200_000, max_upload_pixels=512 * 512))) as c:
        yield c


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def as_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """Float images [B, 3, H, W] quantised as the server's PNGs are."""
    return [np.asarray(im) for im in ImageCodec.to_pil(images)]


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_generations_are_what_generate_gives(client, model):
    r = client.post("/v1/images/generations", json={"prompt": PROMPT, "n": 2, "seed": 5, "caption": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [d["seed"] for d in body["data"]] == [5, 6] and isinstance(body["created"], int)
    want = as_uint8(model.generate([PROMPT, PROMPT], seed=[5, 6]))
    for d, w in zip(body["data"], want, strict=True):
        assert pixels(d["b64_json"]).shape == (32, 32, 3)
        assert np.abs(pixels(d["b64_json"]).astype(int) - w).max() <= 1  # same batch of 2: rounding only
        assert d["caption"] and isinstance(d["caption"], str)
    again = client.post("/v1/images/generations", json={"prompt": PROMPT, "n": 2, "seed": 5}).json()
    assert [d["b64_json"] for d in again["data"]] == [d["b64_json"] for d in body["data"]]  # reproducible
    random = client.post("/v1/images/generations", json={"prompt": PROMPT}).json()["data"][0]
    assert isinstance(random["seed"], int)  # a random seed is returned so the image can be drawn again


def test_streamed_previews_are_the_callbacks_previews(client, model):
    r = client.post("/v1/images/generations/stream", json={"prompt": PROMPT, "seed": 11, "caption": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    kinds = [k for k, _ in events]
    assert kinds[0] == "queued" and kinds[-2:] == ["caption", "done"]
    assert kinds.index("image") > max(i for i, k in enumerate(kinds) if k == "preview")  # previews first
    previews = [d for k, d in events if k == "preview"]
    steps: list[torch.Tensor] = []
    final = model.generate([PROMPT], seed=11, callback=lambda k, n, img: steps.append(img))
    assert [p["scale"] for p in previews] == list(range(len(steps)))
    assert all(p["num_scales"] == len(steps) for p in previews)
    for p, step in zip(previews, steps, strict=True):  # one request alone: the very same computation
        assert np.array_equal(pixels(p["b64_png"]), as_uint8(step)[0])
    image = next(d for k, d in events if k == "image")
    assert image["seed"] == 11 and np.array_equal(pixels(image["b64_json"]), as_uint8(final)[0])
    assert len({p["b64_png"] for p in previews}) >= 3  # coarse to fine: the previews change


def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header; its body is tiny)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _real_png(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _big_bilevel_png() -> bytes:  # 1000 x 1000 pixels of one bit: 4 kB of PNG, a small bomb for the 512x512 limit
    buf = io.BytesIO()
    Image.new("1", (1000, 1000)).save(buf, format="PNG")
    return buf.getvalue()


BAD_JSON = [
    ({"prompt": ""}, 400, "empty_prompt"),
    ({"prompt": "   "}, 400, "empty_prompt"),
    ({"prompt": "x" * 5000}, 400, "prompt_too_long"),
    ({"prompt": "a" * 290}, 400, "sequence_too_long"),  # within the characters, beyond the model's positions
    ({"prompt": "\u2603" * 200}, 400, "sequence_too_long"),  # few characters, many byte tokens
    ({"prompt": PROMPT, "n": 0}, 400, "invalid_request"),
    ({"prompt": PROMPT, "n": 1000}, 400, "n_too_large"),
    ({"prompt": PROMPT, "response_format": "url"}, 400, "invalid_request"),
    ({"prompt": PROMPT, "size": "1024x1024"}, 400, "unsupported_size"),
    ({"prompt": PROMPT, "seed": -1}, 400, "invalid_request"),
    ({"prompt": PROMPT, "guidance": "lots"}, 400, "invalid_request"),
    ({"n": 1}, 400, "invalid_request"),
]


@pytest.mark.parametrize("body,status,code", BAD_JSON)
def test_bad_generation_requests_get_json_errors(client, body, status, code):
    for route in ("/v1/images/generations", "/v1/images/generations/stream"):
        r = client.post(route, json=body)
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text
        assert r.json()["error"]["message"]


BAD_UPLOADS = [
    (b"", 400, "empty_upload"),
    (b"this is not an image at all", 400, "invalid_image"),
    (_real_png()[:60], 400, "invalid_image"),  # truncated: a valid header, a broken body
    (_png(100_000, 100_000), 413, "image_too_large"),  # PIL's own bomb limit
    (_big_bilevel_png(), 413, "image_too_large"),  # the server's pixel limit, from the header
    (b"\x89PNG" + b"\0" * 300_000, 413, "body_too_large"),  # over the upload size: refused unread
]


@pytest.mark.parametrize("data,status,code", BAD_UPLOADS)
def test_bad_uploads_get_json_errors(client, data, status, code):
    r = client.post("/v1/images/captions", files={"file": ("upload.png", data, "image/png")})
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text


def test_captions_and_answers_of_uploads(client, model):
    png = _real_png((32, 32))
    r = client.post("/v1/images/captions", files={"file": ("red.png", png, "image/png")})
    want = model.describe([Image.open(io.BytesIO(png)).convert("RGB")], max_new_tokens=32)[0]
    assert r.status_code == 200 and r.json()["text"] == want
    r = client.post("/v1/images/answers", files={"file": ("red.png", png, "image/png")},
                    data={"question": "what colour is it?"})
    assert r.status_code == 200 and r.json()["text"]
    r = client.post("/v1/images/answers", files={"file": ("red.png", png, "image/png")}, data={"question": " "})
    assert r.status_code == 400 and r.json()["error"]["code"] == "empty_question"
    r = client.post("/v1/images/answers", files={"file": ("red.png", png, "image/png")},
                    data={"question": "\u2603" * 150})  # would overflow the model's sequence in the worker
    assert r.status_code == 400 and r.json()["error"]["code"] == "sequence_too_long"
    r = client.post("/v1/videos/generations", json={"prompt": PROMPT})  # an image-only model
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_modality"


def test_server_keeps_serving_and_pages(client):
    assert client.post("/v1/images/captions", files={"file": ("x.png", b"junk", "image/png")}).status_code == 400
    assert client.post("/v1/images/generations", json={"prompt": ""}).status_code == 400
    assert client.post("/v1/images/generations", json={"prompt": PROMPT, "seed": 1}).status_code == 200
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["image_size"] == [32, 32] and health["auth"] is False
    assert "prompt" in client.get("/").text and client.get("/static/app.js").status_code == 200
    assert "/v1/images/generations" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    r = client.get("/nowhere")
    assert r.status_code == 404 and "error" in r.json()


def test_bearer_token(model):
    with TestClient(create_app(model, ServeSettings(token="s3cret"))) as c:
        body = {"prompt": PROMPT, "seed": 0}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = c.post("/v1/images/generations", json=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
        ok = c.post("/v1/images/generations", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get("/health").json()["auth"] is True  # health and the page stay open


async def _post_all(app, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        return await asyncio.gather(*(c.post("/v1/images/generations", json=b) for b in bodies))


def test_batched_responses_equal_one_at_a_time(model):
    bodies = [{"prompt": PROMPT, "seed": 3}, {"prompt": "the digit 7", "seed": 4, "n": 2},
              {"prompt": "a yellow circle in the top right and a purple square at the bottom", "seed": 3}]
    # a long window and a batch of exactly these 4 rows: they are sure to run as one call
    batched_app = create_app(model, ServeSettings(max_batch=4, max_n=4, max_wait_ms=60_000))
    alone_app = create_app(model, ServeSettings(max_batch=4, max_n=4, max_wait_ms=0))
    try:
        batched = asyncio.run(_post_all(batched_app, bodies))
        alone = [asyncio.run(_post_all(alone_app, [b]))[0] for b in bodies]
        stats = batched_app.state.service.batcher.stats
        assert (stats.calls, stats.largest) == (1, 4)
        assert alone_app.state.service.batcher.stats.largest == 2  # the n=2 request's own rows
    finally:
        batched_app.state.service.batcher.close()
        alone_app.state.service.batcher.close()
    for rb, ra in zip(batched, alone, strict=True):
        assert rb.status_code == ra.status_code == 200
        for db, da in zip(rb.json()["data"], ra.json()["data"], strict=True):
            assert db["seed"] == da["seed"]
            # same codes drawn; batched matmuls may move a float pixel by ~1e-6, so a PNG by one level
            diff = np.abs(pixels(db["b64_json"]).astype(int) - pixels(da["b64_json"]))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01


class GatedModel:
    """The real model, whose generate waits for the test to open the gate."""

    def __init__(self, model):
        self._model, self.entered, self.gate = model, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self._model, name)

    def generate(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(60)
        return self._model.generate(*args, **kwargs)


def test_full_queue_answers_503_and_timeouts_504(model):
    gated = GatedModel(model)
    app = create_app(gated, ServeSettings(max_batch=1, max_n=1, max_queue=2, max_wait_ms=0))

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            post = lambda seed: c.post("/v1/images/generations", json={"prompt": PROMPT, "seed": seed})  # noqa: E731
            first = asyncio.ensure_future(post(0))
            assert await asyncio.to_thread(gated.entered.wait, 60)  # the worker holds request 0
            waiting = [asyncio.ensure_future(post(s)) for s in (1, 2)]
            for _ in range(6000):  # until both wait (bounded, so a bug fails instead of hanging)
                if app.state.service.batcher.waiting == 2:
                    break
                await asyncio.sleep(0.01)
            full = await post(3)
            stream_full = await c.post("/v1/images/generations/stream", json={"prompt": PROMPT})
            gated.gate.set()
            return full, stream_full, await first, await asyncio.gather(*waiting), await post(4)

    try:
        full, stream_full, first, waiting, after = asyncio.run(scenario())
    finally:
        gated.gate.set()
        app.state.service.batcher.close()
    assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
    assert stream_full.status_code == 503
    assert [r.status_code for r in (first, *waiting, after)] == [200] * 4

    gated = GatedModel(model)
    app = create_app(gated, ServeSettings(request_timeout_s=0.5))
    try:
        with TestClient(app) as c:
            r = c.post("/v1/images/generations", json={"prompt": PROMPT})  # the gate stays shut: 504
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
            gated.gate.set()
            app.state.service.settings.request_timeout_s = 60  # the next one is not judged by speed
            assert c.post("/v1/images/generations", json={"prompt": PROMPT}).status_code == 200
    finally:
        gated.gate.set()


def test_serve_command_options():
    args = build_parser().parse_args(["serve", "--max-batch", "8", "--max-wait-ms", "3", "--token", "t"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    s = settings_from_args(args)
    assert (s.max_batch, s.max_wait_ms, s.token) == (8, 3.0, "t")
    with pytest.raises(ValueError, match="max_n"):
        ServeSettings(max_batch=4, max_n=8)


def test_a_model_without_images_refuses_image_routes():
    from unified.debug import debug_model

    with TestClient(create_app(debug_model(["audio"]))) as c:
        assert c.get("/health").json()["image_size"] is None
        for r in (c.post("/v1/images/generations", json={"prompt": "a rising tone"}),
                  c.post("/v1/images/captions", files={"file": ("a.png", _real_png(), "image/png")})):
            assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_modality"


def test_video_clips_as_gif_and_mp4():
    from modalities import VideoCodec, debug_image_codec
    from unified.debug import debug_model

    with TestClient(create_app(debug_model({"video": VideoCodec(debug_image_codec(0))}))) as c:
        body = {"prompt": "a ball moving left", "frames": 3, "seed": 1}
        gif = c.post("/v1/videos/generations", json=body).json()
        clip = Image.open(io.BytesIO(base64.b64decode(gif["b64"])))
        assert (gif["format"], gif["seed"], clip.format, clip.n_frames) == ("gif", 1, "GIF", 3)
        mp4 = c.post("/v1/videos/generations", json={**body, "format": "mp4"}).json()
        assert base64.b64decode(mp4["b64"])[4:8] == b"ftyp"
        r = c.post("/v1/videos/generations", json={**body, "frames": 500})
        assert r.status_code == 400 and r.json()["error"]["code"] == "sequence_too_long"


def test_one_failing_request_does_not_fail_its_batch():
    from recipes.serve.batcher import Batcher, ImageKey, Job

    class Model:  # refuses any batch holding the prompt "bad"
        def generate(self, prompts, seed, **kwargs):
            if "bad" in prompts:
                raise ValueError("bad prompt")
            return torch.tensor(seed, dtype=torch.float32)[:, None, None, None].expand(-1, 3, 2, 2) / 10

    batcher = Batcher(Model(), max_batch=3, max_wait_ms=60_000)  # the three run as one batch, then alone
    try:
        jobs = [Job(ImageKey("image", 1, None), [(p, s)]) for p, s in (("good", 1), ("bad", 2), ("good", 3))]
        futures = [batcher.submit(j) for j in jobs]
        assert futures[0].result(60)[0].getpixel((0, 0)) == (26, 26, 26)  # 0.1 of 255
        assert futures[2].result(60)[0].getpixel((0, 0)) == (76, 76, 76)
        with pytest.raises(ValueError, match="bad prompt"):
            futures[1].result(60)
        assert batcher.stats.calls == 2  # the two good ones alone (the failed batch is not counted)
    finally:
        batcher.close()
