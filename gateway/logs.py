"""Logging configuration: text for people, one JSON object per line for machines."""

from __future__ import annotations

import json
import logging
import logging.config
from typing import Any

# Attributes every LogRecord has; anything else was passed with `extra=` and is worth keeping.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        uid = getattr(record, "instance_uid", None)
        return f"{text} instance_uid={uid}" if uid else text


def config(level: str, fmt: str) -> dict[str, Any]:
    formatter: dict[str, Any]
    if fmt == "json":
        formatter = {"()": JSONFormatter}
    else:
        formatter = {"()": TextFormatter, "format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}
    formatter_json = {"()": JSONFormatter}
    handler = {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter, "json": formatter_json},
        "handlers": {"default": handler},
        "loggers": {
            "gateway": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            # uvicorn logs every WebSocket open and close at INFO: noise at fleet scale. Bind errors
            # and crashes are WARNING or worse and still show; the gateway logs its own start line.
            "uvicorn.error": {"handlers": ["default"], "level": "WARNING", "propagate": False},
            # uvicorn's per-request access log would dwarf everything else at fleet scale.
            "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
        },
    }


def configure(level: str, fmt: str) -> None:
    logging.config.dictConfig(config(level, fmt))
