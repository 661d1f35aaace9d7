"""Structured JSON logs (structlog) with resident ID numbers masked in every field."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from shared.pii import mask_obj


def _mask(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    masked: dict[str, Any] = mask_obj(dict(event_dict))
    return masked


class _MaskingFilter(logging.Filter):
    """Also masks records from libraries (FastStream, aiokafka) that log through stdlib logging."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_obj(record.getMessage())
        record.args = None
        return True


def configure_logging(service: str, level: str = "INFO") -> structlog.stdlib.BoundLogger:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_MaskingFilter())
    logging.basicConfig(level=level, handlers=[handler], format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        force=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    log: structlog.stdlib.BoundLogger = structlog.get_logger().bind(service=service)
    return log
