"""The cache reproducers of benchmarks/fuzz_cache.py that import no torch (and the FIFO one), as real processes.

The whole set (with the stale-answer cases: a changed config, remote code, hfmem code, torch/transformers/peft
version) runs with ``python benchmarks/fuzz_cache.py``; tests/test_cache.py checks the same rules in-process.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.fuzz_cache import Case, cases, run_case

#: The cache reproducers (67 processes): slow marks, which the default suite deselects and CI runs.
pytestmark = pytest.mark.slow

FAST = [case for case in cases() if case.fast]


def test_the_fast_subset_is_the_cache_folder_and_settings_cases() -> None:
    names = [case.name for case in FAST]
    assert len(FAST) >= 10
    assert any("FIFO" in name for name in names) and any("~nosuchuser" in name for name in names)
    assert any("HFMEM_CACHE=." in name for name in names)


@pytest.mark.parametrize("case", FAST, ids=[case.name for case in FAST])
def test_cache_reproducer(case: Case, tmp_path: Path) -> None:
    """No traceback, no hang, the documented exit code and one Error line, no foreign file touched, no stale count."""
    result = run_case(case, tmp_path)
    assert result["problems"] == [], result
