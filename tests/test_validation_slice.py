"""A CPU slice of benchmarks/validate_memory.py: real forward passes checked against hfmem's prediction.

Small random models built from real catalogue configs (2 layers) run on CPU; the bytes autograd saves, and the
model states after one AdamW step, must match hfmem (activations within ±5 %, states exactly). The script is the
deliverable (docs/validation.md is its full run); this runs its quick matrix on two models.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "validate_memory.py"


@pytest.mark.slow  # about a minute: CI runs it (-m 'not network'), the default local suite does not
def test_quick_validation_passes() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    models = ["openai-community/gpt2", "Qwen/Qwen2.5-0.5B-Instruct"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--models", *models],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    match = re.search(r"(\d+) of (\d+) checked rows pass", done.stdout)
    assert match and match.group(1) == match.group(2) and int(match.group(2)) >= 20
    assert "openai-community/gpt2" in done.stdout and "Qwen/Qwen2.5-0.5B-Instruct" in done.stdout
