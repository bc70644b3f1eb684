"""The proxy's own pool speaks TLS to an https:// Ollama (asyncio's ssl), verifying it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from ollama_smart_proxy import Settings, SmartProxy
from ollama_smart_proxy.testing import FakeOllama, serve_in_thread

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key, cert


def test_https_upstream_is_verified_and_streams(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    key, cert = certificate
    fake = FakeOllama()
    with serve_in_thread(fake, ssl_keyfile=str(key), ssl_certfile=str(cert)) as url:
        https = url.replace("http://", "https://")
        chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "over tls"}]}
        # Not trusted: the certificate is refused, as it must be.
        with serve_in_thread(SmartProxy(Settings(upstream=https))) as proxy_url:
            refused = httpx.post(proxy_url + "/api/chat", json=chat)
        assert refused.status_code == 502
        assert "certificate" in refused.json()["error"].lower()
        # Trusted through the standard variable: verified, streamed, kept alive.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with serve_in_thread(SmartProxy(Settings(upstream=https))) as proxy_url:
            with httpx.Client(base_url=proxy_url) as client:
                for _ in range(3):
                    lines = client.post("/api/chat", json=chat).content.splitlines()
                    assert b'"done":true' in lines[-1]
    assert len({r.client for r in fake.requests}) == 1  # one TLS connection, reused
