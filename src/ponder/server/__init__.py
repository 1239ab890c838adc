"""ponder.server: every ponder strategy behind an OpenAI-compatible HTTP API.

    from ponder.server import create_app
    app = create_app(engine, api_key="secret")      # a FastAPI app; run it with uvicorn

FastAPI and uvicorn are the `server` extra; they are imported only when this is used.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "create_app":
        from ponder.server.app import create_app

        return create_app
    raise AttributeError(name)


__all__ = ["create_app"]
