"""Test isolation: no network, a private HF cache, a pinned terminal.

pytest-env (pyproject.toml) sets HF_HUB_OFFLINE=1 and an empty HF_TOKEN before huggingface_hub reads its
constants; the autouse fixture below also sends every cache to tmp_path and makes opening a socket fail, so a test
that reaches for the network fails loudly instead of passing by luck.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

FIXTURES = Path(__file__).parent.parent / "fixtures"  # top level, beside tests/ (the design's layout)
CATALOGUE = Path(__file__).parent.parent / "hfmem" / "catalogue"

#: A tiny Llama config for fake Hub repos.
TINY_LLAMA: dict[str, object] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 1000,
    "tie_word_embeddings": False,
}
#: By hand: embed + untied head 2·1000·64, 2 layers × (4·64² attention + 3·64·128 MLP + 2·64 norms), final norm 64.
TINY_LLAMA_PARAMS = 2 * 1000 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


class NetworkBlockedError(RuntimeError):
    pass


def _refuse(*args: object, **kwargs: object) -> None:
    raise NetworkBlockedError("tests must not use the network")


@pytest.fixture(autouse=True)
def offline_and_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.delenv("HFMEM_DEBUG", raising=False)
    monkeypatch.setenv("HFMEM_CACHE", str(tmp_path / "hfmem_cache"))  # never the user's cache, never shared
    monkeypatch.setenv("HFMEM_NO_SPINNER", "1")  # no "building …" line on stderr (tests of it unset this)
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def hub_online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend HF_HUB_OFFLINE is unset, so hub.py calls the (patched) Hub functions."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A valid safetensors file: 8-byte little-endian header length, the JSON header, zeroed tensor data.

    The layout of the safetensors format (https://huggingface.co/docs/safetensors/index#format); ``tensors`` maps a
    name to its safetensors dtype and shape.
    """
    import json
    import math
    import struct

    from hfmem.memory.checkpoint import SAFETENSORS_DTYPE_BITS

    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = -(-math.prod(shape) * SAFETENSORS_DTYPE_BITS[dtype] // 8)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)
