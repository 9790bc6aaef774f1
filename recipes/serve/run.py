"""The `hart-unified serve` command: its options (one per ServeSettings field) and running uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from dataclasses import fields

from .settings import ServeSettings

HELP = {
    "max_batch": "rows (images, captions) in one model call",
    "max_wait_ms": "how long a request waits for others to share its batch",
    "max_queue": "rows waiting at most; beyond it requests get 503",
    "max_n": "images per request",
    "max_prompt_chars": "prompt length in characters (the model's max_length also bounds it)",
    "max_question_chars": "question length in characters",
    "max_upload_bytes": "upload size in bytes",
    "max_upload_pixels": "upload width x height, read from the header before decoding",
    "request_timeout_s": "seconds a request may queue and run together; then 504",
    "max_new_tokens": "caption and answer length in tokens",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--token", default=os.environ.get("HART_SERVE_TOKEN"),
                   help="bearer token every /v1 request must send (default: $HART_SERVE_TOKEN; none: no auth)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the model (default: torch's, one per core; on a CPU shared with other "
                        "busy processes fewer can be faster)")
    limits = p.add_argument_group("batching and limits")
    for f in fields(ServeSettings):
        if f.name in HELP:
            limits.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                                help=f"{HELP[f.name]} (default {f.default})")


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(token=args.token or None, **{name: getattr(args, name) for name in HELP})


def serve(model, args: argparse.Namespace, name: str) -> int:
    """Serve until interrupted."""
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise ValueError(f"hart-unified serve needs the serve extra ({e.name} is missing): "
                         "pip install -e '.[serve]'") from None
    settings = settings_from_args(args)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if not _loopback(args.host) and settings.token is None:
        print(f"warning: listening on {args.host} without a token: anyone who can reach it can use it",
              file=sys.stderr)
    uvicorn.run(create_app(model, settings, name), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
