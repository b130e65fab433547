"""structlog set-up: JSON or console, every event through the redactor.

No global structlog configuration: `make_logger` wraps a writer with its own processor chain,
and the logger travels down through constructors. Tests pass a StringIO and grep it.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import structlog

from broker.observe.redact import Redactor

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

Logger = Any  # structlog's FilteringBoundLogger; typed loosely to keep imports light


def iso_time(epoch: float | None) -> str | None:
    """Epoch seconds as UTC ISO 8601 (`2026-05-01T12:00:00Z`), next to every epoch we log."""
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def make_logger(
    *,
    fmt: str = "json",
    level: str = "info",
    stream: TextIO | None = None,
    redactor: Redactor | None = None,
) -> Logger:
    redactor = redactor or Redactor()
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    processors = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redactor,  # last before rendering: sees exception text too
        renderer,
    ]
    return structlog.wrap_logger(
        structlog.WriteLogger(stream or sys.stderr),
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        context_class=dict,
        cache_logger_on_first_use=True,
    )


class StdlibBridge(logging.Handler):
    """Sends warnings from stdlib loggers (aiohttp, asyncio) through our redacting logger.

    Installed at WARNING only: `aiohttp.access` must never become enabled at INFO (it would turn
    aiohttp's access log on and halve throughput), and the broker writes its own audit line.
    """

    def __init__(self, log: Logger) -> None:
        super().__init__(level=logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            method = self._log.error if record.levelno >= logging.ERROR else self._log.warning
            method(record.getMessage(), **fields)
        except Exception:  # a logging failure must never take the daemon down
            self.handleError(record)


def bridge_stdlib(log: Logger) -> None:
    """Route stdlib log warnings, and Python `warnings` (a library's UserWarning or
    DeprecationWarning, which Python otherwise prints to stderr as two raw lines), into `log`
    (process-wide; called once by the server): with log_format = "json" every line is JSON."""
    logging.captureWarnings(True)  # warnings.warn -> the "py.warnings" logger, at WARNING
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(StdlibBridge(log))
    root.setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
