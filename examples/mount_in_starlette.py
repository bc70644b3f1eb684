"""Mount the proxy under /llm inside an existing Starlette app.

    uvicorn examples.mount_in_starlette:app --port 8000
    curl http://127.0.0.1:8000/llm/api/tags

The outer app's lifespan does not reach a mounted app, so the proxy opens its upstream
client lazily; closing it in the outer lifespan is good manners.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from ollama_smart_proxy import Settings, SmartProxy

proxy = SmartProxy(Settings())


async def homepage(request: Request) -> JSONResponse:
    return JSONResponse({"hello": "world", "ollama": "/llm/api/tags"})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with proxy:
        yield


app = Starlette(routes=[Route("/", homepage), Mount("/llm", app=proxy)], lifespan=lifespan)
