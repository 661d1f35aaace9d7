"""Issue 18, the CLI reads like a tool for people: yuan with two decimals and tables, JSON only with --json, and
an invalid argument is one line naming the field and the rule."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ops import cli

BALANCE: dict[str, Any] = {
    "psn_no": "32AB", "province": "32", "spendable_current_fen": 123_456, "spendable_prior_fen": 5,
    "account": {"cur": "123456", "status": "active"}, "may_send_to": [],
    "earmarked": [{"binding_id": "B1", "recipient": "32CD", "quota_fen": 50_000, "earmarked_fen": 41_200}],
}


def shown(data: Any, as_json: bool = False) -> str:
    recorder = Console(record=True, width=200)
    original, cli.console = cli.console, recorder
    try:
        cli.out(data, as_json)
    finally:
        cli.console = original
    return recorder.export_text()


def test_people_read_yuan_and_tables(capsys: pytest.CaptureFixture[str]) -> None:
    text = shown(BALANCE)
    assert "¥1,234.56" in text and "¥0.05" in text and "¥412.00" in text and "¥500.00" in text
    assert "_fen" not in text and "spendable_current" in text and "account.status" in text
    assert "earmarked" in text and "B1" in text  # a list of records is a table of its own
    assert "{" not in text  # no raw JSON for people


def test_json_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    cli.out(BALANCE, as_json=True)
    assert json.loads(capsys.readouterr().out) == BALANCE  # fen, exactly, for scripts


@pytest.mark.parametrize(("args", "expected"), [
    (["enroll", "P1", "--region", "320500", "--id-no", "110105194912310021"],
     "error: --id-no: Value error, resident ID check digit does not match (GB 11643-1999 MOD 11-2)"),
    (["credit", "P1", "12.345", "--region", "320500"],
     "error: amount '12.345': amount 12.345 has more than two decimals (national type 16,2)"),
])
def test_an_invalid_argument_is_one_line_naming_the_field(args: list[str], expected: str) -> None:
    done = CliRunner().invoke(cli.app, args)
    assert done.exit_code == 2
    assert done.output.strip().splitlines() == [expected]
