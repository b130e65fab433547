"""A request head (request line and headers) counted to its blank line, however the packets
that carry it are cut: the budget `broker.http.protocol.Gate` holds every head to.

The blank line is CRLF CRLF only: neither of aiohttp's parsers ends a head at a bare LF, so a
head the gate counts ends exactly where aiohttp's does, or later (then a too-long head is
refused early, never let through).
"""

from __future__ import annotations

END = b"\r\n\r\n"  # a head's end: its last header line's CRLF and the blank line's


class Head:
    """The head arriving on a connection, from its first byte to its blank line: its size so
    far, its request line's, and its last bytes (to find its end across packets)."""

    __slots__ = ("line", "line_done", "size", "tail")

    def __init__(self) -> None:
        self.size = 0
        self.line = 0  # bytes of the request line so far
        self.line_done = False
        self.tail = b""  # the last bytes of earlier packets: an end may straddle two

    def reset(self) -> None:
        self.size = self.line = 0
        self.line_done, self.tail = False, b""

    def feed(self, data: bytes) -> int:
        """Count the bytes of `data` that belong to the head: where in `data` it ends (just
        past its blank line), or -1 when it goes on past `data`."""
        tail = self.tail
        end = (tail + data[:3]).find(END) if tail else -1
        if end >= 0:
            end += len(END) - len(tail)
        elif (end := data.find(END)) >= 0:
            end += len(END)
        head = len(data) if end < 0 else end
        self.size += head
        if not self.line_done:
            line_end = data.find(b"\n", 0, head)
            self.line += head if line_end < 0 else line_end
            self.line_done = line_end >= 0
        if end < 0:
            self.tail = (tail + data)[-3:]
        return end

    def refusal(self, limit: int) -> tuple[int, str, str] | None:
        """(status, code, message) when the head counted so far is over `limit` bytes: 414
        when its request line alone is (or has not ended yet), else 431."""
        if self.size <= limit:
            return None
        if self.line > limit or not self.line_done:
            return 414, "uri_too_long", "the request line is too long"
        return 431, "headers_too_large", f"request headers over {limit} bytes"
