"""Byte-level line splitting for NDJSON and SSE streams.

Lines are split on ``b"\\n"`` only: ``str.splitlines`` and httpx's ``aiter_lines`` also
split on U+2028, U+0085 and friends, which are legal inside JSON strings.
"""

from __future__ import annotations

from .errors import UpstreamError

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


class LineTooLong(UpstreamError):
    """A line in an upstream stream is longer than the configured bound."""


class LineSplitter:
    """Feed byte chunks in, get complete lines out (without the ``\\n``).

    Only the trailing partial line is kept between chunks, bounded by ``max_line_bytes``.
    Empty lines are skipped: NDJSON has none, and SSE uses them only as separators.
    """

    __slots__ = ("_buffer", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk`` and return the lines it completed."""
        data = self._buffer + chunk if self._buffer else chunk
        if b"\n" not in data:
            self._check(data)
            self._buffer = data
            return []
        *lines, rest = data.split(b"\n")
        self._check(rest)
        self._buffer = rest
        return [line.rstrip(b"\r") for line in lines if line.strip()]

    def flush(self) -> list[bytes]:
        """Return the last line if the stream did not end with ``\\n``."""
        rest, self._buffer = self._buffer, b""
        return [rest.rstrip(b"\r")] if rest.strip() else []

    def _check(self, partial: bytes) -> None:
        if len(partial) > self.max_line_bytes:
            self._buffer = b""
            raise LineTooLong(
                f"upstream sent a line longer than {self.max_line_bytes} bytes without a newline"
            )
