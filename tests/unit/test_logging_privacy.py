"""Logs are JSON and never carry a resident ID number in clear, from our code or from libraries."""

from __future__ import annotations

import json
import logging

import pytest

from shared.logs import configure_logging
from shared.pii import kafka_key, keyed_hash, mask_text

ID_NO = "11010519491231002X"


def test_logs_are_json_and_masked(capsys: pytest.CaptureFixture[str]) -> None:
    log = configure_logging("unit-test")
    log.warning("card check", cert_no=ID_NO, nested={"id": ID_NO})
    logging.getLogger("aiokafka.consumer").warning("library says %s", ID_NO)
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert len(lines) == 2
    assert ID_NO not in json.dumps(lines)
    assert lines[0]["cert_no"] == "110***********002X" and lines[0]["service"] == "unit-test"
    assert lines[1]["event"] == "library says 110***********002X"


def test_masking_and_hashing() -> None:
    assert mask_text(f"id={ID_NO}; other=123") == "id=110***********002X; other=123"
    assert mask_text("M32050500002202611231015300001") == "M32050500002202611231015300001"  # not an ID
    assert keyed_hash("k", ID_NO) == keyed_hash("k", ID_NO.lower()) != keyed_hash("other", ID_NO)
    assert ID_NO.encode() not in kafka_key(ID_NO) and len(kafka_key("P1")) == 24
