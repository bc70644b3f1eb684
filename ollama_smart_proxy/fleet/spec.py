"""A backend as settings give it: ``backends = [{name, url, ...}]``."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .._urls import parse_ollama_host

#: What a backend's name may be: it shows in headers, logs and metric labels.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class BackendSpec(BaseModel):
    """One Ollama server of the fleet.

    ``name`` is what logs, the ``X-OSP-Backend`` header and metrics show (never the URL);
    ``parallel`` the generations it runs at once per model (its ``OLLAMA_NUM_PARALLEL``,
    1 as Ollama's default); ``max_concurrent`` the most generations the proxy forwards to
    it at once, all models together (none: only ``parallel`` per model); ``weight`` its share
    among equals; ``labels`` free-form tags shown in ``/health``; ``api_key`` a token the
    proxy sends it (``Authorization: Bearer``).
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    url: str
    parallel: int = Field(1, ge=1, le=1024)
    max_concurrent: int | None = Field(None, ge=1)
    weight: float = Field(1.0, gt=0, le=1000)
    labels: dict[str, str] = Field(default_factory=dict)
    api_key: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                f"backend name {value!r} must be 1-64 letters, digits, '.', '_' or '-' "
                "(it shows in headers and metrics)"
            )
        return value

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, value: object) -> object:
        return parse_ollama_host(value) if isinstance(value, str) else value


def check_unique(specs: list[BackendSpec]) -> None:
    """Raise ``ValueError`` naming the first backend name or URL given twice."""
    names: set[str] = set()
    urls: dict[str, str] = {}
    for spec in specs:
        if spec.name in names:
            raise ValueError(f"backends: the name {spec.name!r} is given twice")
        if spec.url in urls:
            raise ValueError(
                f"backends: {spec.name!r} and {urls[spec.url]!r} have the same url {spec.url}"
            )
        names.add(spec.name)
        urls[spec.url] = spec.name


__all__ = ["NAME", "BackendSpec", "check_unique"]
