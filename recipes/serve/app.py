"""The routes of `hart-unified serve` (`create_app`): OpenAI-style text-to-image, its streaming variant
(Server-Sent Events: each scale's preview, then the image, then the model's caption of it), captioning
and QA of an uploaded image, text-to-video where the model has a video head, /health, the web page and
the OpenAPI page (/docs). Every model call goes through the `Batcher`'s worker thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import torch
from fastapi import APIRouter, Depends, FastAPI, File, Form, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from .batcher import Batcher, DescribeKey, ImageKey, Job, QueueFull
from .guards import BodyLimit, install_error_handlers, token_check
from .payloads import b64, clip_bytes, png_bytes, read_upload, wav_bytes
from .schemas import (
    AudioRequest,
    AudioResponse,
    Health,
    ImageData,
    ImageRequest,
    ImagesResponse,
    TextResponse,
    VideoRequest,
    VideoResponse,
)
from .settings import ServeError, ServeSettings

STATIC = Path(__file__).resolve().parent / "static"
UPLOAD_SLACK = 64 * 1024  # multipart framing and the question field around an uploaded file


class Service:
    """The model, its batcher and the checks every request passes before it is queued."""

    def __init__(self, model, settings: ServeSettings, name: str):
        self.model, self.settings, self.name = model, settings, name
        self.batcher = Batcher(model, settings.max_batch, settings.max_wait_ms, settings.max_queue)
        self._blank = None
        if "image" in model.codecs:  # an image's tokens, to measure questions with (any image takes as many)
            codec = model.codecs["image"]
            self._blank = codec.encode_items(torch.zeros(1, 3, *codec.image_size))[0]

    def deadline(self) -> float:
        return time.monotonic() + self.settings.request_timeout_s

    def check_prompt(self, prompt: str, modality: str, segments: int) -> str:
        """The prompt, stripped; ServeError unless it is non-empty and fits the model's sequence."""
        prompt = prompt.strip()
        if not prompt:
            raise ServeError(400, "prompt is empty", "empty_prompt")
        if len(prompt) > self.settings.max_prompt_chars:
            raise ServeError(400, f"prompt has {len(prompt)} characters; at most {self.settings.max_prompt_chars}",
                             "prompt_too_long")
        if modality not in self.model.codecs:
            raise ServeError(400, f"this model has no {modality} head (it has: {', '.join(self.model.codecs)})",
                             "unsupported_modality")
        # refused here, not in the worker, where one row too long would fail its whole batch
        model = self.model
        length = self._length(model.row("text_to_item", None, prompt, modality=modality))
        need = model.builder.pattern(modality, segments, written=True, read=False).length + 1
        if length + need > model.config.max_length:
            fewer = " or ask for fewer frames" if segments > 1 else ""
            raise ServeError(400, f"the prompt takes {length} positions and the {modality} {need} more, beyond the "
                                  f"model's {model.config.max_length}: shorten the prompt{fewer}", "sequence_too_long")
        return prompt

    def check_question(self, question: str) -> str:
        """The question, stripped; ServeError unless it is non-empty and fits with an image and the answer."""
        question = question.strip()
        if not question:
            raise ServeError(400, "question is empty", "empty_question")
        if len(question) > self.settings.max_question_chars:
            raise ServeError(400, f"question has {len(question)} characters; at most "
                                  f"{self.settings.max_question_chars}", "question_too_long")
        length = self._length(self.model.row("qa", self._blank, question=question, modality="image"))
        if length + self.settings.max_new_tokens > self.model.config.max_length:
            raise ServeError(400, f"the image and question take {length} positions, and the answer up to "
                                  f"{self.settings.max_new_tokens}: beyond the model's {self.model.config.max_length}; "
                                  "shorten the question", "sequence_too_long")
        return question

    def _length(self, row) -> int:
        try:
            return self.model.builder.build([row]).text_ids.shape[1]
        except ValueError as e:  # text the tokenizer or a template refuses
            raise ServeError(400, str(e), "invalid_request") from None

    def image_job(self, req: ImageRequest, on_preview=None) -> Job:
        if req.n > self.settings.max_n:
            raise ServeError(400, f"n is {req.n}; at most {self.settings.max_n} images per request", "n_too_large")
        if "image" in self.model.codecs and req.size is not None:
            H, W = self.model.codecs["image"].image_size
            if req.size != f"{W}x{H}":
                raise ServeError(400, f"size {req.size!r}: this model draws {W}x{H} only", "unsupported_size")
        prompt = self.check_prompt(req.prompt, "image", 1)
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        return Job(ImageKey("image", 1, req.guidance), [(prompt, seed + i) for i in range(req.n)],
                   on_preview=on_preview)

    def submit(self, job: Job) -> concurrent.futures.Future:
        try:
            return self.batcher.submit(job)
        except QueueFull as e:
            raise ServeError(503, f"the server is busy ({e}); retry later", "queue_full") from None

    async def wait(self, future: concurrent.futures.Future, deadline: float) -> list:
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            future.cancel()  # still queued: it is dropped, not run
            raise ServeError(504, f"not done within {self.settings.request_timeout_s:g} s", "timeout") from None
        except ValueError as e:  # the model refused the input
            raise ServeError(400, str(e), "invalid_request") from None

    async def run(self, job: Job, deadline: float) -> list:
        return await self.wait(self.submit(job), deadline)

    async def describe(self, items: list, deadline: float, questions: list[str] | None = None,
                       modality: str = "image") -> list[str]:
        """Captions (or answers) of PIL images: uploads, or generated images as the PNGs the client gets."""
        key = DescribeKey(modality, self.settings.max_new_tokens, questions is not None)
        return await self.run(Job(key, [(it, None if questions is None else questions[i])
                                        for i, it in enumerate(items)]), deadline)

    async def upload(self, file: UploadFile) -> object:
        if "image" not in self.model.codecs:
            raise ServeError(400, f"this model has no image head (it has: {', '.join(self.model.codecs)})",
                             "unsupported_modality")
        limit = self.settings.max_upload_bytes
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise ServeError(413, f"upload is over {limit} bytes", "upload_too_large")
        size = self.model.codecs["image"].image_size
        return await asyncio.to_thread(read_upload, data, size, self.settings.max_upload_pixels,
                                       file.filename or "upload")


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def create_app(model, settings: ServeSettings | None = None, name: str = "model") -> FastAPI:
    """The ASGI app serving `model` (a UnifiedModel in eval mode). Close `app.state.service.batcher` when
    done (the command does so on shutdown)."""
    settings = settings or ServeSettings()
    service = Service(model, settings, name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.batcher.close()  # stops the worker thread with the server

    app = FastAPI(title="hart-unified", version="0.1.0", lifespan=lifespan,
                  description="Text-to-image (OpenAI-style, and streamed scale by scale), captioning and QA of "
                              "images with one autoregressive model over HART hybrid tokens.")
    app.state.service = service
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes + UPLOAD_SLACK)
    install_error_handlers(app)
    api = APIRouter(prefix="/v1", dependencies=[Depends(token_check(settings.token))])

    @app.get("/health", response_model=Health, tags=["server"])
    async def health() -> Health:
        image = model.codecs.get("image")
        return Health(status="ok", model=name, modalities=list(model.codecs),
                      image_size=list(image.image_size) if image is not None else None,
                      waiting=service.batcher.waiting, batches=service.batcher.stats.calls,
                      rows=service.batcher.stats.rows, busy_s=round(service.batcher.stats.busy_s, 3),
                      auth=settings.token is not None)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @api.post("/images/generations", response_model=ImagesResponse, tags=["images"])
    async def generations(req: ImageRequest) -> ImagesResponse:
        """Images for a prompt, as base64 PNGs (OpenAI's images API shape; plus seed, guidance, caption)."""
        deadline, job = service.deadline(), service.image_job(req)
        images = await service.run(job, deadline)
        captions = await service.describe(images, deadline) if req.caption else [None] * len(images)
        data = [ImageData(b64_json=b64(png_bytes(img)), seed=seed, caption=cap)
                for img, (_, seed), cap in zip(images, job.rows, captions, strict=True)]
        return ImagesResponse(created=int(time.time()), data=data)

    @api.post("/images/generations/stream", tags=["images"],
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "events: preview (index, scale, num_scales, b64_png) for every "
                                              "scale, image (index, b64_json, seed), caption (index, caption) "
                                              "when asked, then done; or error"}})
    async def generations_stream(req: ImageRequest) -> StreamingResponse:
        """The same images, streamed as Server-Sent Events while they are drawn."""
        deadline, loop, events = service.deadline(), asyncio.get_running_loop(), asyncio.Queue()

        def on_preview(scale: int, num_scales: int, previews) -> None:  # on the worker thread
            loop.call_soon_threadsafe(events.put_nowait, ("preview", scale, num_scales, previews))

        job = service.image_job(req, on_preview)
        future = service.submit(job)  # a full queue is a 503 here, before the stream starts
        # after the last preview: both go through the loop in the order the worker made them
        future.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, ("done",)))
        return StreamingResponse(stream(job, future, events, deadline, req.caption),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def stream(job: Job, future, events: asyncio.Queue, deadline: float, caption: bool) -> AsyncIterator[bytes]:
        try:
            yield sse("queued", {"seeds": [s for _, s in job.rows]})
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), max(deadline - time.monotonic(), 0.001))
                except asyncio.TimeoutError:
                    raise ServeError(504, f"not done within {settings.request_timeout_s:g} s", "timeout") from None
                if event[0] == "done":
                    break
                _, scale, num_scales, previews = event
                for i, img in enumerate(previews):
                    yield sse("preview", {"index": i, "scale": scale, "num_scales": num_scales,
                                          "b64_png": b64(png_bytes(img))})
            images = await service.wait(future, deadline)
            for i, (img, (_, seed)) in enumerate(zip(images, job.rows, strict=True)):
                yield sse("image", {"index": i, "b64_json": b64(png_bytes(img)), "seed": seed})
            if caption:
                for i, text in enumerate(await service.describe(images, deadline)):
                    yield sse("caption", {"index": i, "caption": text})
            yield sse("done", {})
        except ServeError as e:
            yield sse("error", e.body())
        except Exception as e:  # the stream has started: the error goes in it
            yield sse("error", ServeError(500, f"internal error: {type(e).__name__}", "internal_error").body())
        finally:
            future.cancel()  # a client gone before its turn frees its place

    @api.post("/images/captions", response_model=TextResponse, tags=["images"])
    async def captions(file: Annotated[UploadFile, File(description="an image file")]) -> TextResponse:
        """The model's caption of an uploaded image."""
        deadline = service.deadline()
        return TextResponse(text=(await service.describe([await service.upload(file)], deadline))[0])

    @api.post("/images/answers", response_model=TextResponse, tags=["images"])
    async def answers(file: Annotated[UploadFile, File(description="an image file")],
                      question: Annotated[str, Form(description="a question about the image")]) -> TextResponse:
        """The model's answer to a question about an uploaded image."""
        deadline = service.deadline()
        item = await service.upload(file)  # first: it says whether the model reads images at all
        question = service.check_question(question)
        return TextResponse(text=(await service.describe([item], deadline, [question]))[0])

    @api.post("/videos/generations", response_model=VideoResponse, tags=["video"])
    async def videos(req: VideoRequest) -> VideoResponse:
        """A clip for a prompt, as a base64 GIF or mp4 (models with a video head)."""
        deadline = service.deadline()
        prompt = service.check_prompt(req.prompt, "video", req.frames)
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        clip = (await service.run(Job(ImageKey("video", req.frames, req.guidance), [(prompt, seed)]), deadline))[0]
        data = await asyncio.to_thread(clip_bytes, clip, req.format)
        return VideoResponse(created=int(time.time()), format=req.format, b64=b64(data), seed=seed)

    @api.post("/audio/generations", response_model=AudioResponse, tags=["audio"])
    async def audio(req: AudioRequest) -> AudioResponse:
        """Audio for a prompt, as a base64 WAV (models with an audio head)."""
        deadline = service.deadline()
        codec = service.model.codecs.get("audio")
        chunks = codec.segments_for(req.seconds) if codec is not None else 1
        prompt = service.check_prompt(req.prompt, "audio", chunks)
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        item = (await service.run(Job(ImageKey("audio", chunks, req.guidance), [(prompt, seed)]), deadline))[0]
        data = await asyncio.to_thread(wav_bytes, codec.join(item), codec.sample_rate)
        return AudioResponse(created=int(time.time()), format="wav", sample_rate=codec.sample_rate, b64=b64(data),
                             seed=seed)

    app.include_router(api)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
