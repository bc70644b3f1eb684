"""Test helpers: a faithful fake Ollama, and a way to serve any ASGI app on a real socket."""

from __future__ import annotations

from ._fake import FakeModel, FakeOllama, FakeReply, RecordedRequest
from ._redis import RedisServer, free_port
from ._server import serve_in_thread
from ._transport import HostsASGITransport, StreamingASGITransport

__all__ = [
    "FakeModel",
    "FakeOllama",
    "FakeReply",
    "HostsASGITransport",
    "RecordedRequest",
    "RedisServer",
    "StreamingASGITransport",
    "free_port",
    "serve_in_thread",
]
