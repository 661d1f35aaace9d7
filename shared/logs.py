"""Structured JSON logs (structlog) with resident ID numbers masked in every field, for our own log calls
and for libraries (FastStream, aiokafka, uvicorn) that log through the standard library."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

from shared.pii import mask_obj

# The ids of the message being handled (shared/kafka.handling), worked out only when a log line is written:
# binding them into structlog's context for every message cost a tenth of the wallet's CPU under load (issue 14),
# and almost no message logs anything.
HANDLING: ContextVar[Callable[[], dict[str, Any]] | None] = ContextVar("mutualaid_handling", default=None)


def current_ids() -> dict[str, Any]:
    """The correlation ids of the message this task is handling ({} outside a handling)."""
    ids = HANDLING.get()
    return ids() if ids is not None else {}


def _add_handling(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for name, value in current_ids().items():
        event_dict.setdefault(name, value)
    return event_dict


def _mask(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    masked: dict[str, Any] = mask_obj(dict(event_dict))
    masked.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
    return masked


def configure_logging(service: str, level: str = "INFO") -> structlog.stdlib.BoundLogger:
    shared_chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_handling,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _mask,
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared_chain],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(ensure_ascii=False)],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared_chain, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    log: structlog.stdlib.BoundLogger = structlog.get_logger(service).bind(service=service)
    return log
