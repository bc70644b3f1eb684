"""One agent on its own, wrapped around any ASGI app that speaks Ollama.

Here the `redact` plugin wraps `OllamaUpstream` (the proxy's terminal layer) directly, with
no SmartProxy around it: it recognises its own command and rewrites the streamed answer.
`standalone(...)` puts above it what SmartProxy would: the entry that parses each model
request once into an exchange, and the error boundary that turns any failure (Ollama down,
a bad body) into an Ollama-style error answer on every route.

    python examples/single_agent.py            # Ollama at OLLAMA_HOST, served on :11436
    python examples/single_agent.py --demo     # a FakeOllama instead

Then: curl http://127.0.0.1:11436/api/chat -d '{"model":"llama3.2","messages":[
        {"role":"user","content":"/redact write to me@example.com"}]}'
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ollama_smart_proxy import OllamaUpstream, standalone

HERE = Path(__file__).parent
spec = importlib.util.spec_from_file_location("redact_plugin", HERE / "plugins/redact/agent.py")
assert spec is not None and spec.loader is not None
redact_plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(redact_plugin)


def build(demo: bool = False) -> object:
    inner: object
    if demo:
        from ollama_smart_proxy.testing import FakeOllama

        inner = FakeOllama(token_delay=0.02)
    else:
        inner = OllamaUpstream()  # http://127.0.0.1:11434; OllamaUpstream(url) for another
    return standalone(redact_plugin.Redact(inner, mask="[hidden]"))


app = build(demo="--demo" in sys.argv)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=11436)  # type: ignore[arg-type]
