"""Dynamic model loading: aliases, the default model, auto-pull, preload, keep_alive policy."""

from __future__ import annotations

from .loader import ModelLoader
from .names import Aliases, canonical, matches, same, short
from .upstream_models import UpstreamModels

__all__ = ["Aliases", "ModelLoader", "UpstreamModels", "canonical", "matches", "same", "short"]
