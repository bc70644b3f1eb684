"""The official `anthropic` SDK talking to Ollama through the proxy (as Claude Code does).

ollama-smart-proxy --demo          # or in front of a real Ollama
python examples/anthropic_client.py [http://127.0.0.1:11435] [model]
"""

from __future__ import annotations

import sys

from anthropic import Anthropic

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:11435"
model = sys.argv[2] if len(sys.argv) > 2 else "llama3.2"
client = Anthropic(base_url=base, api_key="ollama")  # checked only if the proxy has keys

message = client.messages.create(
    model=model,
    max_tokens=256,
    system="You answer briefly.",
    messages=[{"role": "user", "content": "Say hello in five words."}],
)
print("message:", "".join(b.text for b in message.content if b.type == "text"))

print("stream: ", end="")
with client.messages.stream(
    model=model, max_tokens=256, messages=[{"role": "user", "content": "Count to five."}]
) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
print()

count = client.messages.count_tokens(
    model=model, messages=[{"role": "user", "content": "How many tokens is this?"}]
)
print("count_tokens (an estimate):", count.input_tokens)
