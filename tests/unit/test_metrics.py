"""``Metrics``: Prometheus counters fed by the access log, and ``Server-Timing``."""

from __future__ import annotations

import pytest

from ollama_smart_proxy.testing import FakeOllama
from tests.helpers import CHAT, make

pytestmark = pytest.mark.anyio


async def test_metrics_move_and_server_timing_is_there() -> None:
    fake = FakeOllama()
    _, client = make(fake, aliases={"gpt": "llama3.2"})
    before = (await client.get("/metrics")).text
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt"})
    assert response.headers["server-timing"].startswith("proxy;dur=")
    assert "upstream;dur=" in response.headers["server-timing"]
    await client.post("/api/chat", json={**CHAT, "model": "made-up-name"})
    after = (await client.get("/metrics")).text
    assert before.count("osp_requests_total{") < after.count("osp_requests_total{")
    line = (
        'osp_requests_total{dialect="openai",key="-",model="gpt",route="openai.chat",'
        'status="200"} 1.0'
    )
    assert line in after
    assert 'model="other"' in after  # a 404 for a made-up name is not a label of its own
    assert 'osp_tokens_total{direction="out",model="gpt"}' in after
    assert "osp_time_to_first_token_seconds_bucket" in after
