"""Logging set-up for the CLI; library code only creates loggers."""

from __future__ import annotations

import logging
import sys

# Structured fields that library code passes in `extra`, shown as key=value.
FIELDS = (
    "action",
    "execution_id",
    "state",
    "backend",
    "resource",
    "error_type",
    "revision",
    "exporter",
)


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = [
            f"{name}={getattr(record, name)}"
            for name in FIELDS
            if getattr(record, name, None) is not None
        ]
        return f"{text} {' '.join(pairs)}" if pairs else text


def configure_logging(verbosity: int) -> None:
    """Log to stderr: errors by default, info with -v, debug with -vv.

    Step failures are logged as warnings, so the default leaves them to the
    run summary instead of printing them twice.
    """
    level = logging.ERROR
    if verbosity == 1:
        level = logging.INFO
    elif verbosity >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The transitions library logs every callback at INFO.
    logging.getLogger("transitions").setLevel(max(level, logging.WARNING))
