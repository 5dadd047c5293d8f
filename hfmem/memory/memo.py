"""Remembering pure results over objects compared by identity (inventories and profiles, which are large)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class IdentityMemo(Generic[T]):
    """Results by (some objects, by identity; plain hashable values).

    A sweep or a bisection plans the same model thousands of times; what depends only on the inventory (its group
    sums, its whole-model optimizer states) or on nothing the sweep changes (the smallest GPU count) is computed
    once. The objects are kept with each result and compared by identity, so a recycled ``id()`` never answers for
    another object; the memo empties itself past ``limit`` entries.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._store: dict[tuple[Any, ...], tuple[tuple[object, ...], T]] = {}

    def get(self, owners: tuple[object, ...], key: Hashable, compute: Callable[[], T]) -> T:
        slot = (tuple(id(o) for o in owners), key)
        hit = self._store.get(slot)
        if hit is not None and all(a is b for a, b in zip(hit[0], owners, strict=True)):
            return hit[1]
        value = compute()
        if len(self._store) >= self.limit:
            self._store.clear()
        self._store[slot] = (owners, value)
        return value
