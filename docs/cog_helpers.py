"""What the cog blocks of README.md and docs/*.md call: run the real CLI offline and paste what it prints.

`cog -r README.md docs/*.md` regenerates every block; tests/test_docs.py checks them (`cog --check`). Runs are
offline (the bundled catalogue answers), 100 columns wide, without colour or spinner, so the pages do not depend
on the machine that made them.
"""

from __future__ import annotations

import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["COLUMNS"] = "100"
os.environ["NO_COLOR"] = "1"
os.environ["HFMEM_NO_SPINNER"] = "1"  # the "building …" line depends on what is cached

from pathlib import Path  # noqa: E402

import click  # noqa: E402
from click.testing import CliRunner, Result  # noqa: E402

from hfmem import cli as cli_module  # noqa: E402
from hfmem.cli import cli  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 100
#: Where a README example stops: the first line of the legends and notes under the tables (docs/output.md shows
#: a whole output), and the bars between them.
_LEGEND = re.compile(r"^(Precision|Optimizer|Convention|Method|Bar|Busiest|Overhead|Weights|KV cache|Note|Settings)\b")
_BAR = re.compile(r"^(ZeRO-\d|serve) +[a-z| ]+$")

__all__ = ["ROOT", "CliRunner", "cli", "commands", "help_text", "run", "show"]


def run(args: list[str]) -> Result:
    """`hfmem ARGS` as a user runs it from the checkout's root (paths in ARGS are relative to it); a failing
    example stops cog with what it printed."""
    os.chdir(ROOT)  # cog returns to its own folder after each file
    result = CliRunner().invoke(cli, args, terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result


def show(args: list[str], *, brief: bool = False, model: bool = True) -> None:
    """A console block: the command, then stderr and stdout. ``brief``: stdout's header and tables only (no
    stderr notes, bars, legends or notes), ending in "…" where lines were left out; ``model=False`` also leaves
    out the model's block (the first paragraph: parameters, modules)."""
    import cog  # the module cog runs this block in

    result = run(args)
    stdout = result.stdout if model else "…\n" + result.stdout.split("\n\n", 1)[-1]
    text = (result.stderr + stdout) if not brief else _tables(stdout)
    cog.out("```console\n$ hfmem " + " ".join(args) + "\n" + text + "```\n")


def _tables(stdout: str) -> str:
    kept: list[str] = []
    lines = stdout.splitlines()
    for line in lines:
        if _LEGEND.match(line):
            break
        if not _BAR.match(line):
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join(kept) + ("\n…\n" if len(kept) < len(lines) else "\n")


def commands() -> list[tuple[str, click.Command]]:
    """Every click command a user can type, as ``(how it is typed, command)``: ``hfmem`` and each command that
    module hfmem.cli defines or the group holds, so a new command or option lands in docs/options.md by itself."""
    found: dict[int, tuple[str, click.Command]] = {id(cli): ("hfmem", cli)}
    for name, obj in sorted(vars(cli_module).items()):
        if isinstance(obj, click.Command) and id(obj) not in found:
            found[id(obj)] = (f"hfmem {obj.name or name}", obj)
    for name, sub in sorted(getattr(cli, "commands", {}).items()):
        found.setdefault(id(sub), (f"hfmem {name}", sub))
    return list(found.values())


def help_text(prog: str, command: click.Command) -> str:
    """``PROG --help`` as the terminal shows it at 100 columns."""
    result = CliRunner().invoke(command, ["--help"], prog_name=prog, terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.stdout
