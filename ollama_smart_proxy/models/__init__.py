"""Dynamic model loading: aliases, the default model, auto-pull, preload, keep_alive policy."""

from __future__ import annotations

from ..names import Aliases, canonical, matches, same, short
from .loader import ModelLoader
from .upstream_models import UpstreamModels

__all__ = ["Aliases", "ModelLoader", "UpstreamModels", "canonical", "matches", "same", "short"]
