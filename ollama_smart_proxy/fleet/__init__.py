"""Several Ollama servers behind one proxy: the backends, the routing decision, the layer."""

from __future__ import annotations

from .backend import Backend
from .choose import Choice, choose, rendezvous
from .layer import BACKEND_HEADER, RULES, Fleet
from .spec import BackendSpec

__all__ = [
    "BACKEND_HEADER",
    "RULES",
    "Backend",
    "BackendSpec",
    "Choice",
    "Fleet",
    "choose",
    "rendezvous",
]
