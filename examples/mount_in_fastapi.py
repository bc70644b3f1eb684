"""Mount the proxy under /llm inside a FastAPI app.

uvicorn examples.mount_in_fastapi:app --port 8000
curl http://127.0.0.1:8000/llm/api/chat -d '{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ollama_smart_proxy import Settings, SmartProxy

proxy = SmartProxy(Settings())


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with proxy:
        yield


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def index() -> dict[str, str]:
    return {"ollama": "/llm/api/tags", "openai": "/llm/v1/models"}


app.mount("/llm", proxy)
