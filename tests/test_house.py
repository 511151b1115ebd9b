"""The house's shape, checked: the trainer reads in one sitting and no function in rlhf/ outgrows a screen."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
MAX_TRAINER_LINES = 400


def long_functions(package: Path, limit: int, root: Path = ROOT) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_rlhf_is_longer_than_a_screen():
    assert long_functions(ROOT / "rlhf", MAX_FUNCTION_LINES) == []


def test_the_checker_finds_a_long_function(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n" + "    x = 1\n" * 60 + "\n\ndef g():\n    pass\n")
    assert long_functions(tmp_path, MAX_FUNCTION_LINES, root=tmp_path) == ["m.py:1 f (61 lines)"]


def test_trainer_fits_in_one_sitting():
    lines = len((ROOT / "rlhf" / "trainer.py").read_text().splitlines())
    assert lines <= MAX_TRAINER_LINES, f"rlhf/trainer.py has {lines} lines"
