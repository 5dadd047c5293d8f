"""Small wrong things of issue 14, each pinned: count rounding at unit boundaries, ``--params`` gives no fit, the KV
line under TP says "per GPU", compare's header, offload sweeps' CPU RAM column, compare's help, notes on the result,
and the notebook renderings of a `Report`.

Expected values are worked out by hand in each test (the arithmetic is in the comments), never pasted from hfmem.
"""

from __future__ import annotations

import pytest

from hfmem.units import format_count_short


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        # google/gemma-3-1b: 999,885,952 parameters (issue 14 printed "1e+03M"); /1e9 = 0.99989 → 3 digits → 1.00.
        (999_885_952, "1B"),
        (999_999_999, "1B"),  # 999.999999M rounds to 1000M → one unit up
        (999_500_000, "1B"),  # 999.5M → 3 significant digits → 1000M (round half to even of 999.5 → 1000)
        (999_499_999, "999M"),  # 999.499999M → 999M
        (999_500, "1M"),  # 999.5K → 1000K → 1M
        (999, "999"),
        (1_000, "1K"),
        (10**12, "1T"),  # 1e12 / 1e12 = 1
        (6_738_415_616, "6.74B"),  # Llama-2-7b (its paper's appendix / model card count): 6.738… → 6.74
        (1_500 * 10**12, "1,500T"),  # no unit above T: whole trillions with separators, not 1.5e+03T
    ],
)
def test_short_counts_round_before_choosing_the_unit(count: int, expected: str) -> None:
    assert format_count_short(count) == expected
    assert "e+" not in format_count_short(count)
