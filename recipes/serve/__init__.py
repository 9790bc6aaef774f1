"""`hart-unified serve`: an HTTP service over a unified model (see README, "Serve").

    app.py       the routes (create_app)
    batcher.py   dynamic batching on one worker thread
    guards.py    body-size bound, bearer token, JSON errors
    payloads.py  PNG/GIF out, uploads in
    schemas.py   request and response bodies
    settings.py  limits (ServeSettings) and ServeError
    run.py       the command's options and uvicorn
    static/      the web page (no build step)

Only settings and run's option parsing import without the `serve` extra (fastapi, uvicorn)."""

from .settings import ServeError, ServeSettings

__all__ = ["ServeError", "ServeSettings"]
