"""Compatibility gate: the committed snapshot of every message schema per topic versus the code.

Breaking (fails unless the topic's version is bumped, i.e. it becomes a new topic name):
a removed message type, a removed or renamed field, a field that became required, a new required field
without a default, or a narrowed type (fewer values accepted: tighter bounds, fewer enum values, a new
pattern, a changed type). Additive changes pass: new optional fields, new message types, widened types.

    python -m contracts.compat check      # what the test runs
    python -m contracts.compat snapshot   # deliberately accept the current schemas (commit the result)
"""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts.registry import TOPICS

SNAPSHOT = Path(__file__).parent / "schemas" / "snapshot.json"


def members(contract: Any) -> list[type[BaseModel]]:
    """Models of a contract: the model itself or every member of an Annotated discriminated union."""
    if isinstance(contract, type) and issubclass(contract, BaseModel):
        return [contract]
    args = typing.get_args(contract)
    if typing.get_origin(contract) is typing.Annotated:
        return members(args[0])
    return [m for a in args for m in members(a)]


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline(defs[schema["$ref"].split("/")[-1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k not in ("title", "description", "examples")}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def message_schema(model: type[BaseModel]) -> dict[str, Any]:
    full = model.model_json_schema()
    defs = full.get("$defs", {})
    required = set(full.get("required", []))
    return {name: {"required": name in required, "schema": _inline(prop, defs)}
            for name, prop in full.get("properties", {}).items()}


def current(topics: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    topics = topics or {t: c.contract for t, c in TOPICS.items()}
    return {topic: {m.__name__: message_schema(m) for m in members(contract)} for topic, contract in topics.items()}


# ---------------------------------------------------------------- "accepts everything the old one did"


def accepts_all(new: Any, old: Any) -> bool:
    if new == old or new == {}:
        return True
    if "anyOf" in old:
        return all(accepts_all(new, o) for o in old["anyOf"])
    if "anyOf" in new:
        return any(accepts_all(n, old) for n in new["anyOf"])
    if "const" in old and "enum" in new:
        return old["const"] in new["enum"]
    if "enum" in new:
        return "enum" in old and set(old["enum"]) <= set(new["enum"])
    if new.get("type") != old.get("type"):
        return new.get("type") == "number" and old.get("type") == "integer"
    for lower in ("minimum", "exclusiveMinimum", "minLength", "minItems"):
        if lower in new and new[lower] > old.get(lower, float("-inf")):
            return False
    for upper in ("maximum", "exclusiveMaximum", "maxLength", "maxItems"):
        if upper in new and new[upper] < old.get(upper, float("inf")):
            return False
    for exact in ("pattern", "format", "const"):
        if exact in new and new.get(exact) != old.get(exact):
            return False
    if "items" in new and not accepts_all(new["items"], old.get("items", {})):
        return False
    if "properties" in new:
        old_props = old.get("properties", {})
        for name, prop in new["properties"].items():
            if name in old_props and not accepts_all(prop, old_props[name]):
                return False
        if set(new.get("required", [])) - set(old.get("required", [])):
            return False
    if new.get("additionalProperties") not in (None, True) and "additionalProperties" in new:
        if not accepts_all(new["additionalProperties"], old.get("additionalProperties", {})):
            return False
    return True


def breaking_changes(snapshot: dict[str, Any], now: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for topic, old_messages in sorted(snapshot.items()):
        if topic not in now:
            continue  # retired topic version; its consumers moved with the version bump
        for message, old_fields in sorted(old_messages.items()):
            new_fields = now[topic].get(message)
            if new_fields is None:
                problems.append(f"{topic}: message {message} removed")
                continue
            for field, old in sorted(old_fields.items()):
                new = new_fields.get(field)
                if new is None:
                    problems.append(f"{topic}: {message}.{field} removed or renamed")
                elif new["required"] and not old["required"]:
                    problems.append(f"{topic}: {message}.{field} became required")
                elif not accepts_all(new["schema"], old["schema"]):
                    problems.append(f"{topic}: {message}.{field} narrowed: {old['schema']} -> {new['schema']}")
            for field, new in sorted(new_fields.items()):
                if field not in old_fields and new["required"]:
                    problems.append(f"{topic}: {message}.{field} is a new required field without a default")
    return problems


def load_snapshot() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text())  # type: ignore[no-any-return]


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] == "snapshot":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
        print(f"wrote {SNAPSHOT}")
        return 0
    problems = breaking_changes(load_snapshot(), current())
    for p in problems:
        print(f"BREAKING {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
