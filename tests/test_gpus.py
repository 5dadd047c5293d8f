"""The GPU catalogue (every entry sourced and plausible, names unique, lookup forgiving) and `parse_memory`.

Expected byte counts are computed by hand from the unit definitions, never pasted from hfmem's output.
"""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from hfmem.cli import cli
from hfmem.errors import ExitCode, InvalidSetupError
from hfmem.gpus import GPUS, GpuSpec, find_gpu, parse_memory

GIB = 2**30
MIB = 2**20


def marketing_bytes(spec: GpuSpec) -> int:
    """``'80 GB'`` -> 80 x 2^30: vendors' GPU-memory "GB" is binary (an 80 GB H100 shows 81,559 MiB)."""
    match = re.fullmatch(r"(\d+) GB", spec.marketing)
    assert match, f"{spec.key}: marketing label {spec.marketing!r} is not like '80 GB'"
    return int(match.group(1)) * GIB


@pytest.mark.parametrize("spec", GPUS, ids=[spec.key for spec in GPUS])
def test_every_gpu_has_a_source_and_a_plausible_usable_size(spec: GpuSpec) -> None:
    assert spec.name and spec.source
    # A source is either a public page we can point at, or says plainly that it is derived.
    assert "https://github.com/" in spec.source or spec.source.startswith("derived:")
    assert isinstance(spec.usable_bytes, int)
    assert 0 < spec.usable_bytes <= marketing_bytes(spec)
    # The driver reserves a few percent, never a quarter: a lower ratio means a unit slip (GB vs GiB, KB vs KiB).
    assert spec.usable_bytes >= 0.85 * marketing_bytes(spec)


def test_the_catalogue_covers_the_gpus_people_train_on() -> None:
    keys = {spec.key for spec in GPUS}
    assert keys >= {
        "a100-40gb-sxm",
        "a100-40gb-pcie",
        "a100-80gb-sxm",
        "a100-80gb-pcie",
        "h100-sxm",
        "h100-pcie",
        "h100-nvl",
        "h200",
        "b200",
        "l40s",
        "l4",
        "a10",
        "t4",
        "v100-16gb",
        "v100-32gb",
        "rtx-3090",
        "rtx-4090",
        "rtx-5090",
        "mi250x",
        "mi300x",
    }


def test_keys_and_aliases_are_unique_lowercase_and_dash_separated() -> None:
    names = [name for spec in GPUS for name in (spec.key, *spec.aliases)]
    assert len(names) == len(set(names))
    for name in names:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name


@pytest.mark.parametrize(
    ("anchor", "key", "expected"),
    [
        # deviceQuery 'Total amount of global memory: 40339 MBytes (42298834944 bytes)'
        ("exact bytes", "a100-40gb-sxm", 42_298_834_944),
        # PyTorch OOM 'total capacity of 79.11 GiB' -> 79.11 x 2^30 = 84,943,715,696.64, rounded down
        ("OOM message", "h100-sxm", 84_943_715_696),
        # rocminfo 'Size: 67092480(0x3ffc000) KB' -> x 1024
        ("rocminfo KB", "mi250x", 68_702_699_520),
        # repr 'total_memory=16160MB' is MiB -> 16160 x 2^20
        ("torch repr MiB", "v100-16gb", 16_944_988_160),
    ],
)
def test_spot_checks_of_how_each_kind_of_source_is_converted(anchor: str, key: str, expected: int) -> None:
    assert find_gpu(key).usable_bytes == expected, anchor


@pytest.mark.parametrize(
    ("typed", "key"),
    [
        ("h100-sxm", "h100-sxm"),
        ("H100-SXM", "h100-sxm"),
        ("h100_sxm", "h100-sxm"),
        ("h100 sxm", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("a100-80gb-sxm4", "a100-80gb-sxm"),
        ("A100_40GB_SXM", "a100-40gb-sxm"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb-sxm"),
        ("NVIDIA A100 80GB PCIe", "a100-80gb-pcie"),
        ("RTX 4090", "rtx-4090"),
        ("rtx4090", "rtx-4090"),
        ("4090", "rtx-4090"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("Tesla T4", "t4"),
        ("Tesla V100-SXM2-16GB", "v100-16gb"),
        ("a10g", "a10"),
        ("AMD Instinct MI300X", "mi300x"),
        ("  l4  ", "l4"),
    ],
)
def test_find_gpu_accepts_keys_aliases_and_device_names(typed: str, key: str) -> None:
    spec = find_gpu(typed)
    assert spec.key == key
    assert any(spec is entry for entry in GPUS)


def test_every_key_and_alias_finds_its_own_entry() -> None:
    for spec in GPUS:
        for name in (spec.key, *spec.aliases):
            assert find_gpu(name) is spec
            assert find_gpu(name.upper().replace("-", "_")) is spec


@pytest.mark.parametrize("typed", ["h1000", "", "nvidia", "a100-120gb"])
def test_an_unknown_gpu_is_a_usage_error_that_lists_the_keys_and_suggests_gpu_memory(typed: str) -> None:
    with pytest.raises(InvalidSetupError) as info:
        find_gpu(typed)
    message = str(info.value)
    assert "\n" not in message
    assert f"unknown GPU '{typed}'" in message
    assert "h100-sxm" in message and "rtx-4090" in message and "mi300x" in message
    assert "--gpu-memory 80GiB" in message
    assert info.value.exit_code == ExitCode.USAGE
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80GiB", 80 * GIB),  # 85,899,345,920
        ("80 GiB", 85_899_345_920),
        ("80gib", 85_899_345_920),
        ("80Gi", 85_899_345_920),
        ("24G", 24 * GIB),  # bare G is binary: 25,769,803,776
        ("79.2GiB", 85_040_352_460),  # 79.2 x 1,073,741,824 = 85,040,352,460.8, rounded down
        ("0.5GiB", 536_870_912),
        (".5 GiB", 536_870_912),
        ("80GB", 80_000_000_000),  # GB is decimal
        ("80 gb", 80_000_000_000),
        ("81920MiB", 85_899_345_920),  # 81,920 x 1,048,576
        ("512M", 536_870_912),
        ("16000MB", 16_000_000_000),
        ("1TiB", 1_099_511_627_776),
        ("1TB", 1_000_000_000_000),
        ("1.5T", 1_649_267_441_664),  # 1.5 x 2^40
        ("4096KiB", 4_194_304),
        ("4096KB", 4_096_000),
        ("1024", 1024),  # a bare number is bytes
        ("1024B", 1024),
        ("85899345920", 85_899_345_920),
        ("85_899_345_920", 85_899_345_920),
        ("85,899,345,920", 85_899_345_920),
        (" 80GiB ", 85_899_345_920),
    ],
)
def test_parse_memory(text: str, expected: int) -> None:
    assert parse_memory(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "GiB", "eighty GiB", "80 GiBs", "80XB", "80 G B", "-1GiB", "1.5", "1.5B", "0GiB", "0", "1e9", "8O GiB"],
)
def test_parse_memory_rejects_bad_input_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(text)
    message = str(info.value)
    assert "\n" not in message
    assert f"'{text}'" in message
    assert "80GiB" in message and "80GB" in message


@pytest.mark.parametrize(
    ("typed", "candidates"),
    [
        # NVIDIA's A100 datasheet: 40 GB and 80 GB, each as SXM4 and PCIe.
        ("a100", {"a100-40gb-sxm", "a100-40gb-pcie", "a100-80gb-sxm", "a100-80gb-pcie"}),
        ("NVIDIA A100", {"a100-40gb-sxm", "a100-40gb-pcie", "a100-80gb-sxm", "a100-80gb-pcie"}),
        ("A100_40GB", {"a100-40gb-sxm", "a100-40gb-pcie"}),
        ("a100 80gb", {"a100-80gb-sxm", "a100-80gb-pcie"}),
        # NVIDIA's H100 datasheet: SXM5 and PCIe (80 GB) and NVL (94 GB).
        ("H100", {"h100-sxm", "h100-pcie", "h100-nvl"}),
        ("h100-80gb", {"h100-sxm", "h100-pcie"}),
        # NVIDIA's V100 datasheet: 16 GB and 32 GB.
        ("Tesla V100", {"v100-16gb", "v100-32gb"}),
    ],
)
def test_a_name_that_fits_several_cards_asks_which(typed: str, candidates: set[str]) -> None:
    with pytest.raises(InvalidSetupError) as info:
        find_gpu(typed)
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == ExitCode.USAGE
    assert f"GPU '{typed}' could be several cards" in message
    listed = set(message.split("name one: ")[1].split(" (")[0].split(", "))
    assert listed == candidates


def test_gpu_a100_on_the_command_line_is_a_usage_error_listing_the_cards() -> None:
    result = CliRunner().invoke(cli, ["--params", "7B", "--gpu", "a100", "--training-only"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    for key in ("a100-40gb-sxm", "a100-40gb-pcie", "a100-80gb-sxm", "a100-80gb-pcie"):
        assert key in result.stderr
    assert "Traceback" not in result.stderr
