"""What a server allows (`ServeSettings`) and the one error type its routes raise (`ServeError`), which
becomes an OpenAI-style JSON body: {"error": {"message", "type", "code"}}."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """Limits and batching of `hart-unified serve`; every field is a command-line option."""

    max_batch: int = 32  # rows (images, captions) in one model call
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for others to join it
    max_queue: int = 256  # rows waiting at most; beyond it requests get 503 instead of a longer wait
    max_n: int = 8  # images per request
    max_prompt_chars: int = 300  # also bounded by the model's max_length (in tokens)
    max_question_chars: int = 200
    max_upload_bytes: int = 8 * 1024 * 1024
    max_upload_pixels: int = 4096 * 4096  # checked from the header, before anything is decoded
    request_timeout_s: float = 60.0  # queueing and generating together; then 504
    max_new_tokens: int = 32  # caption and answer length
    token: str | None = None  # a bearer token every /v1 request must carry (None: no auth)

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_n", "max_prompt_chars", "max_question_chars",
                     "max_upload_bytes", "max_upload_pixels", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and request_timeout_s > 0")
        if self.max_n > self.max_batch or self.max_n > self.max_queue:
            raise ValueError(f"max_n ({self.max_n}) cannot exceed max_batch ({self.max_batch}) or max_queue "
                             f"({self.max_queue}): such a request could never run")


class ServeError(Exception):
    """A request the server answers with `status` and a JSON error instead of a result."""

    def __init__(self, status: int, message: str, code: str = "invalid_request", kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "code": self.code}}
