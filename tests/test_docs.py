"""The README and docs/ cannot rot: their generated blocks match the CLI (so the README's examples run), every
option of every command is documented with its help, the README keeps to its line budget and every relative link
lands on a file and heading that exist."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
from cogapp import Cog

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 300  # issue 14: a front door a newcomer reads in two minutes

sys.path.insert(0, str(ROOT / "docs"))
from cog_helpers import commands  # noqa: E402


def test_generated_blocks_are_current(monkeypatch: pytest.MonkeyPatch) -> None:
    # `cog --check` over every page in one run (one hfmem cache, so a command two pages show is traced once): the
    # example outputs, --help texts and figures are what the CLI and benchmarks/results give today.
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.chdir(ROOT)
    out, err = io.StringIO(), io.StringIO()
    cog = Cog()
    cog.set_output(stdout=out, stderr=err)
    status = cog.main(["cog", "--check", *(str(p.relative_to(ROOT)) for p in PAGES)])
    stale = [line for line in out.getvalue().splitlines() if "(changed)" in line or "Check failed" in line]
    assert status == 0, f"stale: {stale or err.getvalue()[-2000:]}; run `cog -r README.md docs/*.md`"


def test_every_option_of_every_command_is_documented_with_help() -> None:
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    found = commands()
    assert [prog for prog, _ in found][:2] == ["hfmem", "hfmem compare"]
    for prog, command in found:
        assert f"## `{prog} --help`" in text, f"{prog} is not in docs/options.md"
        for param in command.params:
            if param.param_type_name != "option":
                continue
            assert getattr(param, "help", None), f"{prog}: {param.name} has no help"
            for opt in param.opts:
                if opt.startswith("--"):
                    assert opt in text, f"{prog}: {opt} is not in docs/options.md"


def test_readme_keeps_to_its_line_budget() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the budget is {README_MAX_LINES}"


def test_readme_states_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "scripts/hfmem meta-llama/Llama-2-7b-hf" in text
    assert "\nscripts/test " in text
    assert (ROOT / "scripts" / "hfmem").exists() and (ROOT / "scripts" / "test").exists()


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _unfenced(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where a link is a link."""
    return re.sub(r"`[^`\n]*`", "", _unfenced(text))


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", _unfenced(path.read_text(encoding="utf-8")), flags=re.M)
    return {_slug(h) for h in headings}


def test_slug_follows_github() -> None:
    # Anchors GitHub gives these headings (checked against the README's old table of contents links).
    assert _slug("Fine-tuning methods (`--method`)") == "fine-tuning-methods---method"
    assert _slug("Peak memory: activations, logits, overheads") == "peak-memory-activations-logits-overheads"
    assert _slug("`hfmem --help`") == "hfmem---help"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8")))
    broken = []
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"
