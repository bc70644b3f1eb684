"""Serve an ASGI app with uvicorn on a loopback port, in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def serve_in_thread(
    app: Any, host: str = "127.0.0.1", port: int = 0, **config: Any
) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread with its own event loop; yield its base URL.

    For tests and demos: sync and async clients alike can talk to it. Needs the ``server``
    extra (uvicorn).
    """
    import uvicorn

    options: dict[str, Any] = {"log_level": "warning", "lifespan": "auto", "loop": "asyncio"}
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
    thread = threading.Thread(target=server.run, name="osp-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.005)
    sockets = server.servers[0].sockets
    bound_port = sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
