"""State shared by several proxy replicas: Redis behind small interfaces."""

from __future__ import annotations

from .redis_state import Failure, RedisState, SharedUnavailable

__all__ = ["Failure", "RedisState", "SharedUnavailable"]
