"""Small helpers the build modules share: transformers kept quiet, an error's first line, the tensors in arguments."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any


def _tensors_in(values: Any) -> Iterator[Any]:
    """The tensors among a layer's arguments, looking one level into tuples and lists (rotary cos/sin)."""
    import torch

    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from (item for item in value if isinstance(item, torch.Tensor))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' logging and warnings while building (hfmem's own notes go to stderr instead)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    """The error's text on one line (validators put the useful part on the second line), at most 300 chars."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return (text[:297] + "...") if len(text) > 300 else (text or type(error).__name__)
