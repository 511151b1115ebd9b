"""The library sits below the scripts: nothing in rlhf/ or classic/ imports recipes/ or benchmarks/, and
`import rlhf` stays light (no gymnasium, no matplotlib) while `from classic import value_iteration` still works."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = sorted(p for package in ("rlhf", "classic") for p in (REPO / package).rglob("*.py"))
SCRIPTS = {"recipes", "benchmarks"}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, at any depth (function-local imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_the_walk_finds_every_kind_of_import(tmp_path):
    assert REPO / "rlhf" / "cli.py" in LIBRARY and REPO / "classic" / "functional.py" in LIBRARY
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import benchmarks.engines\n"
        "def f():\n"
        "    from recipes.common import end_distributed\n"
        "    importlib.import_module('recipes.ppo')\n"
        "from . import sibling\n"
    )
    assert imported_modules(probe) == [(1, "benchmarks.engines"), (3, "recipes.common"), (4, "recipes.ppo")]


def test_library_never_imports_recipes_or_benchmarks():
    upward = [
        f"{path.relative_to(REPO)}:{line}: imports {module}"
        for path in LIBRARY
        for line, module in imported_modules(path)
        if module.split(".")[0] in SCRIPTS
    ]
    assert not upward, "the library imports a script package:\n" + "\n".join(upward)


def test_import_rlhf_pulls_in_neither_gymnasium_nor_matplotlib():
    code = (
        "import sys, rlhf\n"
        "heavy = sorted(m for m in ('gymnasium', 'matplotlib') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_classic_still_exports_the_tabular_methods():
    code = (
        "import sys\n"
        "import classic\n"
        "assert 'gymnasium' not in sys.modules\n"
        "from classic import TDResult, policy_iteration, q_learning, value_iteration\n"
        "assert value_iteration.__module__.startswith('classic.tabular')\n"
        "assert classic.sarsa is sys.modules['classic.tabular'].sarsa\n"
        "assert set(classic.__all__) <= set(dir(classic))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import classic

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        classic.nope  # noqa: B018
