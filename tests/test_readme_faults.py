"""The README's table of fault kinds names, for each, the test that holds its right value: every
`tests/<file>.py::<test>` it names must exist (a renamed or deleted test fails here, not silently in
the documentation), and every real-world case of tests/data/cases has a row."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ["C01", "C03", "C04", "C05", "C06", "C07", "C08", "C11", "C14"]


def fault_table() -> list[str]:
    """The rows of the table that follows "**Fault kinds handled**" in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("**Fault kinds handled**")
    lines = text[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| fault kind |"))
    rows = []
    for line in lines[first + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_test_the_fault_table_names_exists():
    rows = fault_table()
    assert len(rows) >= 20
    named = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 3, row
        found = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", cells[2])
        assert found, f"row names no test: {row}"
        named += found
    missing = [f"{file}::{name}" for file, name in named
               if not (ROOT / file).is_file() or name not in defined_functions(ROOT / file) or not name.startswith("test_")]
    assert not missing, f"README.md's fault table names tests that do not exist: {missing}"


def test_every_real_world_case_has_a_row():
    table = "\n".join(fault_table())
    assert [case for case in CASES if f"({case})" not in table] == []
