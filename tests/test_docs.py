"""The README cannot rot: its generated blocks match the CLI, and every option is documented."""

from __future__ import annotations

import os
from pathlib import Path

from cogapp import Cog

from hfmem.cli import cli

README = Path(__file__).parent.parent / "README.md"


def test_readme_generated_blocks_are_current(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # `cog --check`: the example outputs and --help in the README are what the CLI prints today.
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "100")
    cog = Cog()
    cog.set_output(stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))  # noqa: SIM115
    assert cog.main(["cog", "--check", str(README)]) == 0, "README is stale: run `cog -r README.md`"


def test_every_option_is_documented_with_help() -> None:
    text = README.read_text()
    for param in cli.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--"):
                assert opt in text, f"{opt} is not in the README"
        if param.param_type_name == "option":
            assert getattr(param, "help", None), f"{param.name} has no help"


def test_readme_states_the_two_commands() -> None:
    text = README.read_text()
    assert "hfmem meta-llama/Llama-2-7b-hf" in text
    assert "python -m pytest" in text
