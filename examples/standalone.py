"""Run the proxy from Python, as the `ollama-smart-proxy` launcher does.

    python examples/standalone.py            # Ollama from OLLAMA_HOST / OSP_UPSTREAM
    OSP_PORT=8080 python examples/standalone.py

Then point any Ollama client at http://127.0.0.1:11435 (or OSP_PORT).
"""

from __future__ import annotations

import uvicorn

from ollama_smart_proxy import Settings, SmartProxy

settings = Settings()  # keyword arguments, OSP_* variables, OLLAMA_HOST, OSP_CONFIG
app = SmartProxy(settings)

if __name__ == "__main__":
    print(f"proxying {settings.upstream} on http://{settings.host}:{settings.port}")
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False)
