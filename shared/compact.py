"""The stored form of a small per-person read model (issue 14: Redis bytes per person).

A view kept for every insured person is stored as a JSON array of its values in a fixed order, without the field
names and without the person's number (the key holds it): `["320500","310",true,"normal",1]` instead of the 110
bytes of the model's JSON. Trailing values that are None by default are left off. Records written before this form
(JSON objects) are still read, and take the compact form when next written, so existing stacks need no migration.

The layout is part of the data on disk: a new field goes at the end (older records read it as its default, and a
release without it ignores it); a field is never moved, renamed or taken out of the middle. `Layout` refuses a
model whose fields it does not name exactly, so a field added to the model without a place in the layout fails at
import, not in production.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


class Layout(Generic[M]):
    def __init__(self, model: type[M], key_field: str, fields: tuple[str, ...]) -> None:
        if sorted((key_field, *fields)) != sorted(model.model_fields):
            raise TypeError(f"{model.__name__}: the stored layout must name every field but {key_field!r} once: "
                            f"{fields} vs {tuple(model.model_fields)}")
        self.model, self.key_field, self.fields = model, key_field, fields

    def dump(self, view: M, compact: bool = True) -> str:
        """The stored form; `compact=False`: the model's JSON object (Settings.compact_views)."""
        if not compact:
            return view.model_dump_json()
        data = view.model_dump(mode="json")
        values = [data[name] for name in self.fields]
        while values and values[-1] is None and self.model.model_fields[self.fields[len(values) - 1]].default is None:
            values.pop()  # read back as its default, which is None
        return orjson.dumps(values).decode()

    def load(self, raw: str | bytes, key: str) -> M:
        """`raw` as stored under the person `key` (compact, or a JSON object written before the compact form)."""
        values: Any = orjson.loads(raw)
        if isinstance(values, dict):
            return self.model.model_validate(values)
        if not isinstance(values, list):
            raise ValueError(f"{self.model.__name__}: not a stored record: {str(raw)[:80]}")
        # values past the layout's end are fields a newer release appended: a rollback reads what it knows
        return self.model.model_validate({self.key_field: key, **dict(zip(self.fields, values, strict=False))})
