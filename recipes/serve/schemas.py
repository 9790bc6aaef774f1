"""Request and response bodies. Image generation speaks OpenAI's `POST /v1/images/generations` (prompt,
n, response_format b64_json; size only as the model's own), plus `seed`, `guidance` and `caption`. Fields
other clients send (model, user, quality, style) are accepted and ignored."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(description="what to draw")
    n: int = Field(1, ge=1, description="images for this prompt (seeds seed, seed+1, ...)")
    response_format: Literal["b64_json"] = Field("b64_json", description="only b64_json (PNG): nothing is hosted")
    size: str | None = Field(None, description="WxH; the model draws one size only (see /health)")
    seed: int | None = Field(None, ge=0, lt=2**63, description="reproducible draws; random (and returned) if absent")
    guidance: float | None = Field(None, ge=0.0, le=50.0,
                                   description="classifier-free guidance scale (default: the model's own)")
    caption: bool = Field(False, description="also return the model's own caption of each image")


class ImageData(BaseModel):
    b64_json: str = Field(description="the PNG, base64")
    revised_prompt: str | None = None
    seed: int = Field(description="the seed this image was drawn with")
    caption: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class VideoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
    frames: int = Field(4, ge=1, description="frames of the clip (bounded by the model's max_length)")
    seed: int | None = Field(None, ge=0, lt=2**63)
    guidance: float | None = Field(None, ge=0.0, le=50.0)
    format: Literal["gif", "mp4"] = "gif"


class VideoResponse(BaseModel):
    created: int
    format: str
    b64: str = Field(description="the clip file, base64")
    seed: int


class AudioRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
    seconds: float = Field(2.0, gt=0.0, le=60.0, description="length, rounded up to the model's whole chunks")
    seed: int | None = Field(None, ge=0, lt=2**63)
    guidance: float | None = Field(None, ge=0.0, le=50.0)


class AudioResponse(BaseModel):
    created: int
    format: str = Field(description="wav (16-bit PCM, mono)")
    sample_rate: int
    b64: str = Field(description="the audio file, base64")
    seed: int


class TextResponse(BaseModel):
    text: str = Field(description="the caption, or the answer to the question")


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    modalities: list[str]
    image_size: list[int] | None = Field(description="[H, W] of generated images")
    waiting: int = Field(description="rows waiting for the model")
    batches: int = Field(description="model calls so far")
    rows: int = Field(description="rows (images, captions) run so far; rows / batches is the mean batch")
    busy_s: float = Field(description="seconds spent in model calls so far")
    auth: bool = Field(description="whether /v1 routes need a bearer token")
