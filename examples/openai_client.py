"""The official `openai` SDK talking to Ollama through the proxy.

ollama-smart-proxy --demo          # or in front of a real Ollama
python examples/openai_client.py [http://127.0.0.1:11435] [model]
"""

from __future__ import annotations

import sys

from openai import OpenAI

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:11435"
model = sys.argv[2] if len(sys.argv) > 2 else "llama3.2"
client = OpenAI(base_url=f"{base}/v1", api_key="ollama")  # the key is not checked by Ollama

print("models:", [m.id for m in client.models.list()])

reply = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Say hello in five words."}],
    max_completion_tokens=64,
    # Ollama-only controls, which Ollama's own /v1 cannot take:
    extra_body={"options": {"num_ctx": 8192}, "keep_alive": "10m"},
)
print("chat:", reply.choices[0].message.content)

print("stream: ", end="")
for chunk in client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Count to five."}], stream=True
):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
