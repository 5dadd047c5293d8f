"""The bundled catalogue: verbatim config.json snapshots of popular models, used when the Hub cannot answer.

Each entry is a folder ``<org>__<name>/`` holding the model's ``config.json`` and an ``expected.json`` with its
exact published parameter count and the source of that count. Optional ``aliases`` in ``expected.json`` list other
ids with the same architecture (a base model and its instruct variant, a legacy id the Hub redirects).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["CatalogueEntry", "entries", "find"]


@dataclass(frozen=True)
class CatalogueEntry:
    model_id: str
    directory: Path
    architecture: str | None
    total_params: int
    source_of_truth: str
    aliases: tuple[str, ...] = ()

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"

    def load_config(self) -> dict[str, Any]:
        with self.config_path.open(encoding="utf-8") as f:
            config: dict[str, Any] = json.load(f)
        return config


@cache
def entries() -> tuple[CatalogueEntry, ...]:
    """All bundled entries, sorted by model id."""
    root = Path(str(resources.files(__name__)))
    found = []
    for expected_path in sorted(root.glob("*/expected.json")):
        expected = json.loads(expected_path.read_text(encoding="utf-8"))
        found.append(
            CatalogueEntry(
                model_id=expected["model_id"],
                directory=expected_path.parent,
                architecture=expected.get("architecture"),
                total_params=int(expected["total_params"]),
                source_of_truth=expected.get("source_of_truth", ""),
                aliases=tuple(expected.get("aliases", ())),
            )
        )
    return tuple(sorted(found, key=lambda e: e.model_id.lower()))


def find(model_id: str) -> tuple[CatalogueEntry, bool] | None:
    """The entry for ``model_id`` (Hub ids are case-insensitive), and whether it matched through an alias."""
    wanted = model_id.lower()
    for entry in entries():
        if entry.model_id.lower() == wanted:
            return entry, False
    for entry in entries():
        if wanted in (alias.lower() for alias in entry.aliases):
            return entry, True
    return None
