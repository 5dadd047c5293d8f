"""Built-in GPU catalogue: per GPU, the memory PyTorch can see, with the source of every figure; and `--gpu-memory`.

What `usable_bytes` means. It is the device total that PyTorch reports, i.e.
``torch.cuda.get_device_properties(0).total_memory`` (== ``torch.cuda.mem_get_info()[1]`` == CUDA's
``totalGlobalMem``), not the marketing figure. The driver keeps part of the board for itself (ECC, firmware,
reserved pages), so an "80 GB" H100 shows 81,559 MiB in ``nvidia-smi`` but only ~79.11 GiB to PyTorch.

How the figures were chosen, best first:

1. an exact byte count from CUDA (``deviceQuery``'s ``totalGlobalMem``) or ROCm (``rocminfo`` pool size);
2. PyTorch's own OOM message, ``GPU 0 has a total capacity of 79.11 GiB`` -- exactly what the allocator sees,
   rounded to 0.01 GiB (so within ~5 MiB), converted as ``value x 2**30``;
3. ``derived: ...`` with the arithmetic, where no measurement of that exact variant was found.

Each ``source`` says which, and where it was seen. Caveats, all of which make the real figure *smaller*: the
total moves by ~0.1-0.2 GiB between driver versions, ECC settings and vGPU/cloud hypervisors; a desktop or a
display attached to a consumer card takes a few hundred MiB more; a MIG slice sees only its slice. When in
doubt, users pass the exact value with ``--gpu-memory`` (see `parse_memory`).

NOTE: the PyTorch CUDA context (~0.3-0.5 GiB of kernels and cuBLAS/cuDNN workspaces created on first use) is
NOT subtracted here: ``total_memory`` includes it, and hfmem counts it as a separate overhead term.

Marketing labels: vendors' "GB" for GPU memory is binary -- an 80 GB H100 exposes 81,559 MiB, more than
80 x 10^9 bytes -- so `GpuSpec.marketing` reads as GiB. `parse_memory`, for user input, keeps GB decimal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from hfmem.errors import InvalidSetupError
from hfmem.limits import MAX_BYTES

__all__ = ["AMBIGUOUS_GPUS", "GpuSpec", "GPUS", "find_gpu", "parse_memory"]

_MIB = 2**20
_GIB = 2**30


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model as PyTorch sees it.

    Attributes:
        key: the CLI name (``--gpu h100-sxm``): lowercase, ``-`` separated.
        name: a human name, e.g. ``NVIDIA H100 80GB HBM3 (SXM)``.
        marketing: the vendor's capacity label, e.g. ``80 GB`` (binary: see the module docstring).
        usable_bytes: the device total PyTorch reports (``total_memory``), CUDA context included.
        source: where ``usable_bytes`` comes from (a URL and the quoted figure, or ``derived: ...``).
        aliases: other accepted names, stored in the normalised form `find_gpu` compares against.
    """

    key: str
    name: str
    marketing: str
    usable_bytes: int
    source: str
    aliases: tuple[str, ...] = ()


def _gib(text: str) -> int:
    """Bytes for a GiB figure as PyTorch prints it (two decimals); rounded down to a whole byte."""
    return int(Decimal(text) * _GIB)


def _mib(count: int) -> int:
    return count * _MIB


_OOM = "PyTorch OOM message 'GPU 0 has a total capacity of {} GiB'"

# The order here is the order listings and the unknown-GPU message show them in.
GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(
        key="a100-40gb-sxm",
        name="NVIDIA A100-SXM4-40GB",
        marketing="40 GB",
        usable_bytes=42_298_834_944,
        source=(
            "deviceQuery on 'NVIDIA A100-SXM4-40GB': 'Total amount of global memory: 40339 MBytes "
            "(42298834944 bytes)' (https://github.com/bottlerocket-os/bottlerocket/pull/3873); agrees with "
            + _OOM.format("39.39")
            + " on Perlmutter A100 40GB nodes (https://github.com/NERSC/sc24-dl-tutorial README)"
        ),
        aliases=("a100-sxm4-40gb", "a100-40gb-sxm4"),
    ),
    GpuSpec(
        key="a100-40gb-pcie",
        name="NVIDIA A100-PCIE-40GB",
        marketing="40 GB",
        usable_bytes=42_298_834_944,
        source=(
            "derived: same GA100 die and 40 GB HBM2 as a100-40gb-sxm (nvidia-smi shows 40960 MiB on both); "
            "no PCIe-specific PyTorch total found, so the SXM4 deviceQuery figure 42298834944 bytes is assumed"
        ),
        aliases=("a100-pcie-40gb", "a100-40gb-pcie4"),
    ),
    GpuSpec(
        key="a100-80gb-sxm",
        name="NVIDIA A100-SXM4-80GB",
        marketing="80 GB",
        usable_bytes=_gib("79.15"),
        source=(
            _OOM.format("79.15")
            + " on an 'A100 80GB' (https://github.com/vllm-project/vllm/issues/4408; form factor not stated); "
            "bytes = 79.15 x 2^30"
        ),
        aliases=("a100-sxm4-80gb", "a100-80gb-sxm4"),
    ),
    GpuSpec(
        key="a100-80gb-pcie",
        name="NVIDIA A100 80GB PCIe",
        marketing="80 GB",
        usable_bytes=_gib("79.15"),
        source=(
            "derived: same GA100 die and 80 GB HBM2e as a100-80gb-sxm (nvidia-smi shows 81920 MiB on both); "
            "the 79.15 GiB OOM figure of https://github.com/vllm-project/vllm/issues/4408 is assumed"
        ),
        aliases=("a100-pcie-80gb",),
    ),
    GpuSpec(
        key="h100-sxm",
        name="NVIDIA H100 80GB HBM3 (SXM)",
        marketing="80 GB",
        usable_bytes=_gib("79.11"),
        source=(
            _OOM.format("79.11") + " with nvidia-smi 'NVIDIA H100 80GB HBM3 ... 700W ... 81559MiB' in the same report "
            "(https://github.com/vllm-project/vllm/issues/27508); bytes = 79.11 x 2^30"
        ),
        aliases=("h100-sxm5", "h100-sxm5-80gb", "h100-80gb-hbm3"),
    ),
    GpuSpec(
        key="h100-pcie",
        name="NVIDIA H100 PCIe (80GB)",
        marketing="80 GB",
        usable_bytes=_gib("79.11"),
        source=(
            "derived: nvidia-smi reports the same 81559 MiB total for 'NVIDIA H100 PCIe' as for the SXM part; "
            "no PCIe-specific PyTorch total found, so the h100-sxm figure 79.11 GiB "
            "(https://github.com/vllm-project/vllm/issues/27508) is assumed"
        ),
        aliases=("h100-pcie-80gb", "h100-80gb-pcie"),
    ),
    GpuSpec(
        key="h100-nvl",
        name="NVIDIA H100 NVL (94GB)",
        marketing="94 GB",
        usable_bytes=_gib("93.00"),
        source=(
            _OOM.format("93.00")
            + " on an 'H100 NVL 94GB' (RunPod) (https://github.com/ali-vilab/VACE/issues/56); bytes = 93.00 x 2^30. "
            "nvidia-smi shows 95830 MiB (https://github.com/NVIDIA/gpu-admin-tools/issues/4); bare-metal reports "
            "of 93.09-93.10 GiB exist, the lower figure is kept"
        ),
        aliases=("h100-94gb", "h100-nvl-94gb"),
    ),
    GpuSpec(
        key="h200",
        name="NVIDIA H200 (141GB HBM3e)",
        marketing="141 GB",
        usable_bytes=_gib("139.80"),
        source=(
            _OOM.format("139.80")
            + " on an H200 (https://github.com/stas00/ml-engineering debug/pytorch.md, 'Discovering how many GBs "
            "is allocatable'); bytes = 139.80 x 2^30"
        ),
        aliases=("h200-141gb", "h200-sxm"),
    ),
    GpuSpec(
        key="b200",
        name="NVIDIA B200 (HGX/DGX, 180GB HBM3e)",
        marketing="180 GB",
        usable_bytes=_gib("178.35"),
        source=(
            _OOM.format("178.35")
            + " on 'NVIDIA B200 w/ 180GiB of HBM' (https://github.com/stas00/ml-engineering debug/pytorch.md, "
            "'Debugging CUDA OOM in forward'); bytes = 178.35 x 2^30"
        ),
        aliases=("b200-180gb",),
    ),
    GpuSpec(
        key="l40s",
        name="NVIDIA L40S",
        marketing="48 GB",
        usable_bytes=_gib("44.53"),
        source=(
            _OOM.format("44.53")
            + " on an 'L40S 48GB' (https://github.com/Wan-Video/Wan2.1/issues/205); bytes = 44.53 x 2^30"
        ),
        aliases=("l40s-48gb",),
    ),
    GpuSpec(
        key="l4",
        name="NVIDIA L4",
        marketing="24 GB",
        usable_bytes=_gib("22.03"),
        source=(
            _OOM.format("22.03")
            + " on L4 (GCP g2 and Modal runs quoted in several public GitHub repositories; no issue URL found); "
            "bytes = 22.03 x 2^30. Cross-check: nvidia-smi 23034 MiB "
            "(https://github.com/modal-labs/modal-client/pull/2797) less the ~0.5 GiB reserve seen on other GPUs"
        ),
        aliases=("l4-24gb",),
    ),
    GpuSpec(
        key="a10",
        name="NVIDIA A10 (24GB)",
        marketing="24 GB",
        usable_bytes=_gib("21.99"),
        source=(
            _OOM.format("21.99")
            + " on a Lambda 'a10' instance (https://github.com/zai-org/CogVLM/issues/236); bytes = 21.99 x 2^30. "
            "AWS's A10G reports ~22.06 GiB; the alias a10g gets the lower A10 figure"
        ),
        aliases=("a10-24gb", "a10g", "a10g-24gb"),
    ),
    GpuSpec(
        key="t4",
        name="NVIDIA Tesla T4",
        marketing="16 GB",
        usable_bytes=_gib("14.56"),
        source=(
            _OOM.format("14.56")
            + " on a GCP 'Tesla T4' (https://github.com/Zheng-Chong/CatVTON/issues/133); bytes = 14.56 x 2^30. "
            "Older drivers reported 14.75-14.76 GiB"
        ),
        aliases=("t4-16gb",),
    ),
    GpuSpec(
        key="v100-16gb",
        name="NVIDIA Tesla V100 16GB",
        marketing="16 GB",
        usable_bytes=_mib(16160),
        source=(
            "torch.cuda.get_device_properties repr '_CudaDeviceProperties(name='Tesla V100-SXM2-16GB', ..., "
            "total_memory=16160MB)' (torch 1.8.1, YOLOv5 Focus() profiling, "
            "https://github.com/ultralytics/yolov5/discussions/3181); bytes = 16160 x 2^20 (repr is in MiB)"
        ),
        aliases=("v100-sxm2-16gb", "v100-pcie-16gb", "v100-16gb-sxm2"),
    ),
    GpuSpec(
        key="v100-32gb",
        name="NVIDIA Tesla V100 32GB",
        marketing="32 GB",
        usable_bytes=_gib("31.74"),
        source=(
            "PyTorch OOM message '(GPU 0; 31.74 GiB total capacity; ...)' on a 'V100 32GB' "
            "(https://github.com/liucongg/ChatGLM-Finetuning/issues/73); bytes = 31.74 x 2^30"
        ),
        aliases=("v100-sxm2-32gb", "v100-pcie-32gb", "v100-32gb-sxm2"),
    ),
    GpuSpec(
        key="rtx-3090",
        name="NVIDIA GeForce RTX 3090",
        marketing="24 GB",
        usable_bytes=_gib("23.70"),
        source=(
            "PyTorch OOM message '(GPU 0; 23.70 GiB total capacity; ...)' on an 'RTX-3090 (24GB)' "
            "(https://github.com/Lightning-AI/lit-llama/issues/137); bytes = 23.70 x 2^30; "
            "a display attached to the card lowers it further"
        ),
        aliases=("rtx3090", "3090"),
    ),
    GpuSpec(
        key="rtx-4090",
        name="NVIDIA GeForce RTX 4090",
        marketing="24 GB",
        usable_bytes=_gib("23.64"),
        source=(
            _OOM.format("23.64")
            + " on an 'RTX 4090 24GB' (https://github.com/ali-vilab/VGen/issues/104); bytes = 23.64 x 2^30; "
            "a display attached to the card lowers it further"
        ),
        aliases=("rtx4090", "4090"),
    ),
    GpuSpec(
        key="rtx-5090",
        name="NVIDIA GeForce RTX 5090",
        marketing="32 GB",
        usable_bytes=_gib("31.36"),
        source=(
            _OOM.format("31.36")
            + " on an 'RTX 5090' (https://github.com/TrajectoryCrafter/TrajectoryCrafter/issues/20); "
            "bytes = 31.36 x 2^30; a display attached to the card lowers it further"
        ),
        aliases=("rtx5090", "5090"),
    ),
    GpuSpec(
        key="mi250x",
        name="AMD Instinct MI250X, one GCD (the 128 GB package is two 64 GB devices)",
        marketing="64 GB",
        usable_bytes=67_092_480 * 1024,
        source=(
            "rocminfo on 'AMD Instinct MI250X/MI250': GPU pool 'Size: 67092480(0x3ffc000) KB' per GCD "
            "(https://github.com/openmm/openmm/issues/3940); bytes = 67092480 x 1024 (= 63.98 GiB, the figure "
            "ROCm PyTorch OOM messages print for 64 GB devices). PyTorch sees each GCD as its own device"
        ),
        aliases=("mi250x-gcd", "mi250"),
    ),
    GpuSpec(
        key="mi300x",
        name="AMD Instinct MI300X",
        marketing="192 GB",
        usable_bytes=_gib("191.98"),
        source=(
            "ROCm PyTorch OOM message 'HIP out of memory ... GPU 0 has a total capacity of 191.98 GiB' on "
            "8x MI300X (https://github.com/vllm-project/vllm/issues/7951); bytes = 191.98 x 2^30"
        ),
        aliases=("mi300x-192gb",),
    ),
)

_VENDOR_WORDS = ("nvidia-", "amd-", "geforce-", "tesla-", "instinct-", "radeon-")


def _normalise(name: str) -> str:
    """``'NVIDIA H100_80GB  HBM3'`` -> ``'nvidia-h100-80gb-hbm3'``: lowercase, ``_``/spaces to single ``-``."""
    return re.sub(r"[-_\s]+", "-", name.strip().lower()).strip("-")


def _without_vendor(name: str) -> str:
    """Drop leading vendor/brand words, so ``nvidia-geforce-rtx-4090`` -> ``rtx-4090``."""
    stripped = True
    while stripped:
        stripped = False
        for word in _VENDOR_WORDS:
            if name.startswith(word):
                name, stripped = name[len(word) :], True
    return name


def _build_index(gpus: tuple[GpuSpec, ...]) -> dict[str, GpuSpec]:
    index: dict[str, GpuSpec] = {}
    for spec in gpus:
        for name in (spec.key, *spec.aliases):
            if name != _normalise(name) or name in index:
                raise ValueError(f"GPU name {name!r} of {spec.key!r} is not normalised or is already taken")
            index[name] = spec
    return index


_INDEX = _build_index(GPUS)

# Names that fit more than one card above. A 40 GB owner told "a100" meant the 80 GB SXM part got an optimistic
# verdict, so these ask which one instead (`find_gpu`). Sizes and form factors: NVIDIA's A100 datasheet (40/80 GB,
# SXM4/PCIe), H100 datasheet (SXM5, PCIe, NVL), V100 datasheet (16/32 GB).
AMBIGUOUS_GPUS: dict[str, tuple[str, ...]] = {
    "a100": ("a100-40gb-sxm", "a100-40gb-pcie", "a100-80gb-sxm", "a100-80gb-pcie"),
    "a100-40gb": ("a100-40gb-sxm", "a100-40gb-pcie"),
    "a100-80gb": ("a100-80gb-sxm", "a100-80gb-pcie"),
    "h100": ("h100-sxm", "h100-pcie", "h100-nvl"),
    "h100-80gb": ("h100-sxm", "h100-pcie"),
    "v100": ("v100-16gb", "v100-32gb"),
}
for _name, _keys in AMBIGUOUS_GPUS.items():  # a typo here would make a name silently resolve, or offer a missing key
    if _name in _INDEX or not all(key in _INDEX for key in _keys):
        raise ValueError(f"ambiguous GPU name {_name!r} is a catalogue name, or lists a key that is not one")


def find_gpu(name: str) -> GpuSpec:
    """Look a GPU up by key or alias, ignoring case, ``_``/space vs ``-``, and a leading vendor name.

    Args:
        name: what the user typed, e.g. ``H100``, ``rtx_4090``, ``NVIDIA H100 80GB HBM3``.

    Returns:
        The catalogue entry.

    Raises:
        InvalidSetupError: the name is unknown (the message lists the keys and suggests ``--gpu-memory``), or it
            fits several cards (``a100``: 40/80 GB, SXM/PCIe; the message lists those keys).

    Example:
        >>> find_gpu("RTX 4090").key
        'rtx-4090'
    """
    normalised = _normalise(name)
    for candidate in (normalised, _without_vendor(normalised)):
        if candidate in _INDEX:
            return _INDEX[candidate]
        if candidate in AMBIGUOUS_GPUS:
            raise InvalidSetupError(
                f"GPU '{name}' could be several cards; name one: "
                + ", ".join(AMBIGUOUS_GPUS[candidate])
                + " (--list-gpus shows each one's memory)"
            )
    keys = ", ".join(spec.key for spec in GPUS)
    raise InvalidSetupError(
        f"unknown GPU '{name}'; use one of {keys}, or give the memory PyTorch sees directly, e.g. --gpu-memory 80GiB"
    )


# Binary and decimal multiples; the unit is matched case-insensitively (so "gb" == "GB", "gib" == "GiB").
_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "ki": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mi": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gi": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "ti": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}
_MEMORY = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]+)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
_FORMS = "write it like 80GiB, 79.2 GiB, 81920MiB, 24G (binary), 80GB (decimal, 10^9) or 85899345920 (bytes)"


def parse_memory(text: str) -> int:
    """Parse a memory size for ``--gpu-memory`` into bytes.

    ``GiB``/``Gi``/``G`` are binary (2^30) -- a bare ``G`` means GiB, as in ``nvidia-smi``, PyTorch and
    Kubernetes -- while ``GB`` is decimal (10^9); likewise ``MiB``/``M`` (2^20) vs ``MB`` (10^6), ``KiB``/``K``
    vs ``KB`` and ``TiB``/``T`` vs ``TB``. A bare number (or ``B``) is bytes and must be whole. Units are
    case-insensitive, spaces and ``_``/``,`` digit separators are allowed. A fractional size in a unit is
    rounded down to a whole byte.

    Args:
        text: e.g. ``80GiB``, ``79.2 GiB``, ``81920MiB``, ``80GB``, ``24G``.

    Returns:
        The size in bytes, > 0.

    Raises:
        ValueError: with a one-line message that shows the accepted forms.

    Example:
        >>> parse_memory("80GiB"), parse_memory("80GB")
        (85899345920, 80000000000)
    """
    match = _MEMORY.match(text)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"'{text}' is not a memory size; {_FORMS}")
    number = match.group(1).replace("_", "").replace(",", "")
    try:
        value = Decimal(number) * _UNITS[unit]
    except ArithmeticError as e:  # decimal's InvalidOperation and Overflow
        raise ValueError(f"'{text}' is not a memory size; {_FORMS}") from e
    if value > MAX_BYTES:  # before int(): a 5,000-digit size has no float to print
        raise ValueError(f"'{text}' is more than the 1 EiB (2^60 bytes) hfmem plans for; {_FORMS}")
    if _UNITS[unit] == 1 and value != value.to_integral_value():
        raise ValueError(f"'{text}' is a fraction of a byte; give a unit ({_FORMS})")
    size = int(value)
    if size <= 0:
        raise ValueError(f"'{text}': the memory size must be positive; {_FORMS}")
    return size
