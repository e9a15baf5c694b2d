"""Structured logs of the service: one JSON object per line on stderr, with the job id as its own field, so a
log pipeline can follow one job across servers and worker hosts (``jq 'select(.job_id == "...")'``)."""

from __future__ import annotations

import json
import logging
import time

_FIELDS = ("job_id", "pid", "exit_status", "host")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        line.update({k: getattr(record, k) for k in _FIELDS if hasattr(record, k)})
        return json.dumps(line, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Job events of ``configurator.service`` to stderr as JSON lines (once per process)."""
    log = logging.getLogger("configurator.service")
    if any(isinstance(h.formatter, JsonLines) for h in log.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


__all__ = ["JsonLines", "configure_logging"]
