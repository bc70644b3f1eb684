"""Byte-level line splitting for NDJSON and SSE streams.

Lines are split on ``b"\\n"`` only: ``str.splitlines`` and httpx's ``aiter_lines`` also
split on U+2028, U+0085 and friends, which are legal inside JSON strings.
"""

from __future__ import annotations

from .errors import LineTooLong

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


class LineSplitter:
    """Feed byte chunks in, get complete lines out (without the ``\\n``).

    Only the trailing partial line is kept between chunks, bounded by ``max_line_bytes``,
    as a list of pieces joined once its newline arrives: a line dripped a byte at a time
    costs linear work, not quadratic. Empty lines are skipped: NDJSON has none, and SSE
    uses them only as separators.
    """

    __slots__ = ("_parts", "_size", "max_line_bytes")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes <= 0:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def pending(self) -> bool:
        """Whether part of a line is held back."""
        return bool(self._parts)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk`` and return the lines it completed."""
        if b"\n" not in chunk:
            self._parts.append(chunk)
            self._size += len(chunk)
            self._check(self._size)
            return []
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._parts = []
        *lines, rest = chunk.split(b"\n")
        self._check(len(rest))
        if rest:
            self._parts.append(rest)
        self._size = len(rest)
        return [line.rstrip(b"\r") for line in lines if line.strip()]

    def flush(self) -> list[bytes]:
        """Return the last line if the stream did not end with ``\\n``."""
        rest = b"".join(self._parts)
        self._parts = []
        self._size = 0
        return [rest.rstrip(b"\r")] if rest.strip() else []

    def _check(self, size: int) -> None:
        if size > self.max_line_bytes:
            self._parts = []
            self._size = 0
            raise LineTooLong(
                f"Ollama sent a line longer than {self.max_line_bytes} bytes without a newline"
            )


__all__ = ["DEFAULT_MAX_LINE_BYTES", "LineSplitter", "LineTooLong"]
