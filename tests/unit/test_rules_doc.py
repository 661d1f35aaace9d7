"""docs/rules.md is the repository's own copy of the business rules (ids B1–B9, S1–S8, H1–H7, W1–W7, C1–C3) that
code comments cite. These checks keep it honest, without any service running:

(a) every rule id cited in the code (services/, shared/, contracts/, ops/, sim/; *.py and *.lua) has a section;
(b) every file named on an `Implemented in:` or `Tested by:` line exists, and every `::name` after a Python file is
    a function or class defined there (top level or in a top-level class; `Class::method` also works);
(c) the sections are headed `### <ID> — <title>`, each id once, together exactly the rule ids, each section with
    one `Implemented in:` and one `Tested by:` line.

The last test feeds the checker broken documents, so it cannot pass by checking nothing.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES_DOC = ROOT / "docs" / "rules.md"
CODE_DIRS = ("services", "shared", "contracts", "ops", "sim")
CODE_SUFFIXES = (".py", ".lua")

RULE_ID = re.compile(r"\b[BSHWC][1-9]\b")
HEADING = re.compile(r"^### (?P<rule_id>[BSHWC][1-9]) — \S.*$")
REFERENCE_LINE = re.compile(r"^(?P<label>Implemented in|Tested by):(?P<rest>.*)$")
REFERENCE_LABELS = ("Implemented in", "Tested by")
BACKTICKED = re.compile(r"`([^`]+)`")
NOTHING_YET = "none yet"

RULE_IDS: frozenset[str] = frozenset(
    [f"B{n}" for n in range(1, 10)] + [f"S{n}" for n in range(1, 9)] + [f"H{n}" for n in range(1, 8)]
    + [f"W{n}" for n in range(1, 8)] + [f"C{n}" for n in range(1, 4)]
)


# ---------------------------------------------------------------- the checker


def rule_ids_in_code(root: Path) -> dict[str, set[str]]:
    """Rule id → the repository-relative files whose text cites it."""
    cited: dict[str, set[str]] = {}
    for folder in CODE_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in CODE_SUFFIXES or not path.is_file():
                continue
            for rule_id in RULE_ID.findall(path.read_text(encoding="utf-8")):
                cited.setdefault(rule_id, set()).add(path.relative_to(root).as_posix())
    return cited


def section_ids(doc: str) -> list[str]:
    """The rule ids of the document's `### <ID> — <title>` headings, in document order."""
    return [m["rule_id"] for line in doc.splitlines() if (m := HEADING.match(line))]


def structure_problems(doc: str) -> list[str]:
    """(c): well-formed headings, each rule id exactly once, every rule covered, two reference lines each."""
    problems: list[str] = []
    labels: dict[str, Counter[str]] = {}
    current: str | None = None
    for number, line in enumerate(doc.splitlines(), start=1):
        heading = HEADING.match(line)
        if heading:
            current = heading["rule_id"]
            labels.setdefault(current, Counter())
        elif line.startswith("### "):
            problems.append(f"line {number}: a rule heading must read `### <ID> — <title>`: {line!r}")
            current = None
        elif line.startswith("#"):
            current = None
        elif (reference := REFERENCE_LINE.match(line)) and current is not None:
            labels[current][reference["label"]] += 1
    ids = section_ids(doc)
    for rule_id, count in sorted(Counter(ids).items()):
        if count > 1:
            problems.append(f"{rule_id}: {count} sections, expected one")
    for rule_id in sorted(set(ids) - RULE_IDS):
        problems.append(f"{rule_id}: a section for an id that is not a rule")
    for rule_id in sorted(RULE_IDS - set(ids)):
        problems.append(f"{rule_id}: no section")
    for rule_id, counted in sorted(labels.items()):
        for label in REFERENCE_LABELS:
            if counted[label] != 1:
                problems.append(f"{rule_id}: {counted[label]} `{label}:` lines, expected one")
    return problems


def _members(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    return {node.name: node for node in body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def defines(tree: ast.Module, names: list[str]) -> bool:
    """Whether `names` (`func`, `Class`, `method` or `Class::method` split on `::`) is defined in the module."""
    top_level = _members(tree.body)
    class_level: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            class_level.update(_members(node.body))
    found = top_level.get(names[0]) or class_level.get(names[0])
    for name in names[1:]:
        if not isinstance(found, ast.ClassDef):
            return False
        found = _members(found.body).get(name)
    return found is not None


def reference_problems(doc: str, root: Path) -> list[str]:
    """(b): every backticked `path` or `path::name` on a reference line exists under `root`."""
    problems: list[str] = []
    trees: dict[Path, ast.Module] = {}
    for number, line in enumerate(doc.splitlines(), start=1):
        reference = REFERENCE_LINE.match(line)
        if reference is None:
            continue
        refs = BACKTICKED.findall(reference["rest"])
        if not refs and not reference["rest"].strip().startswith(NOTHING_YET):
            problems.append(f"line {number}: `{reference['label']}:` names no file and does not say {NOTHING_YET!r}")
        for ref in refs:
            relative, *names = ref.split("::")
            names = [name.split("[", 1)[0] for name in names]  # a parametrised test id: test_x[case]
            path = root / relative
            if relative.startswith("/") or ".." in Path(relative).parts or not path.exists():
                problems.append(f"line {number}: {relative} does not exist")
                continue
            if not names:
                continue
            if path.suffix != ".py" or not path.is_file():
                problems.append(f"line {number}: {ref}: `::name` can only be checked in a Python file")
                continue
            if path not in trees:
                trees[path] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            if not all(names) or not defines(trees[path], names):
                problems.append(f"line {number}: {ref}: {'::'.join(names)} is not defined in {relative}")
    return problems


# ---------------------------------------------------------------- the repository's document


def rules_doc() -> str:
    assert RULES_DOC.is_file(), f"{RULES_DOC.relative_to(ROOT)} is missing"
    return RULES_DOC.read_text(encoding="utf-8")


def test_every_rule_id_cited_in_code_has_a_section() -> None:
    cited = rule_ids_in_code(ROOT)
    assert cited, "no rule id found in the code: the scan is broken"
    documented = set(section_ids(rules_doc()))
    missing = {rule_id: sorted(files) for rule_id, files in sorted(cited.items()) if rule_id not in documented}
    assert not missing, f"rule ids cited in code without a `### <ID> — <title>` section in docs/rules.md: {missing}"


def test_every_referenced_file_and_name_exists() -> None:
    problems = reference_problems(rules_doc(), ROOT)
    assert not problems, "docs/rules.md names what is not there:\n" + "\n".join(problems)


def test_sections_cover_every_rule_exactly_once() -> None:
    problems = structure_problems(rules_doc())
    assert not problems, "docs/rules.md sections:\n" + "\n".join(problems)


# ---------------------------------------------------------------- the checker checks


def test_the_checker_catches_broken_documents(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(
        "def test_real() -> None: ...\n\n\nclass TestGroup:\n    async def test_inner(self) -> None: ...\n")
    (tmp_path / "rules.lua").write_text("-- rule W3\n")
    good = ("### W3 — Limits\n\nText.\n\nImplemented in: `rules.lua`\n"
            "Tested by: `tests/test_x.py::test_real`, `tests/test_x.py::TestGroup::test_inner`, "
            "`tests/test_x.py::test_inner`, `tests/test_x.py::test_real[case-1]`\n")
    assert reference_problems(good, tmp_path) == []

    broken = ("### W3 — Limits\n\nImplemented in: `rules.lua`, `services/gone.py`\n"
              "Tested by: `tests/test_x.py::test_missing`, `tests/test_x.py::test_real::nested`, "
              "`rules.lua::anything`, `../outside.py`\n\n"
              "### W3 — Again\n\nImplemented in: nothing\nTested by: none yet\n\n"
              "### Q1 — Not a rule\n\n### W4 - wrong dash\n")
    problems = "\n".join(reference_problems(broken, tmp_path))
    assert "services/gone.py does not exist" in problems
    assert "test_missing is not defined" in problems
    assert "test_real::nested is not defined" in problems
    assert "rules.lua::anything: `::name` can only be checked" in problems
    assert "../outside.py does not exist" in problems
    assert "names no file" in problems
    assert "Tested by: none yet" not in problems
    structure = "\n".join(structure_problems(broken))
    assert "W3: 2 sections, expected one" in structure
    assert "W3: 2 `Implemented in:` lines" in structure
    assert "must read `### <ID> — <title>`" in structure  # Q1 is no rule id, and W4 has a hyphen
    assert "B1: no section" in structure and "C3: no section" in structure

    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "x.py").write_text("LIMIT = 3  # rule W3, then B1/S8, not X1, SW3 or W10\n")
    assert rule_ids_in_code(tmp_path) == {"W3": {"services/x.py"}, "B1": {"services/x.py"},
                                          "S8": {"services/x.py"}}
