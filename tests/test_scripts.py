"""The two set-up commands (scripts/hfmem, scripts/test): valid bash, and they install only what is missing.

Each run goes against a stand-in virtual environment whose `bin/python` logs its arguments: pip calls are only
logged (nothing is downloaded), everything else runs on this interpreter. So the tests see which installs the
scripts ask for — torch's build by the GPU check, nothing on a second run — in well under a second each.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPTS = [ROOT / "scripts" / name for name in ("hfmem", "test", "_env.sh")]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # pytorch.org "Start Locally": Linux, Pip, CPU


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def _fake_env(tmp_path: Path, *, gpu: bool) -> tuple[dict[str, str], Path]:
    """A venv whose python logs each call; `-m pip` only logs, with the exit status pip would give."""
    venv, log, bin_ = tmp_path / "venv", tmp_path / "calls.log", tmp_path / "bin"
    (venv / "bin").mkdir(parents=True)
    bin_.mkdir()
    python = venv / "bin" / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$*" >> {shlex.quote(str(log))}\n'
        # as pip answers: `show torch` exits 1 when torch is not installed, a --dry-run finds no local wheel
        'if [[ "$1 $2 $3" == "-m pip show" || "$*" == *--dry-run* ]]; then exit 1; fi\n'
        'if [[ "$1 $2" == "-m pip" ]]; then echo "Collecting torch"; exit 0; fi\n'  # pip talks on stdout
        f'exec {shlex.quote(sys.executable)} "$@"\n'
    )
    python.chmod(0o755)
    if gpu:  # what `nvidia-smi -L` prints on a machine with a CUDA GPU
        smi = bin_ / "nvidia-smi"
        smi.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n')
        smi.chmod(0o755)
    env = {**os.environ, "HFMEM_VENV": str(venv), "PATH": f"{bin_}:/usr/bin:/bin"}
    env.pop("HFMEM_TORCH_INDEX_URL", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env, log


def _pip_calls(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip")] if log.exists() else []


def test_first_run_installs_cpu_torch_then_hfmem_and_the_second_run_installs_nothing(tmp_path: Path) -> None:
    env, log = _fake_env(tmp_path, gpu=False)
    first = subprocess.run([str(ROOT / "scripts" / "test"), "--version"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "pytest" in first.stdout + first.stderr  # pytest --version ran, after the installs
    calls = _pip_calls(log)
    assert calls[0] == "-m pip install --quiet --upgrade pip>=25.1"
    assert f"-m pip install torch==2.13.0 --index-url {CPU_INDEX}" in calls
    assert calls[-1] == f"-m pip install --quiet -e {ROOT}[web] --group {ROOT}/pyproject.toml:dev"
    assert "CPU build" in first.stderr
    log.unlink()
    for script in ("test", "hfmem"):  # the test install covers the tool's too
        again = subprocess.run([str(ROOT / "scripts" / script), "--version"], env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert again.stderr == ""
        assert _pip_calls(log) == []


def test_a_cuda_gpu_gets_the_default_torch_build(tmp_path: Path) -> None:
    env, log = _fake_env(tmp_path, gpu=True)
    run = subprocess.run([str(ROOT / "scripts" / "hfmem"), "--help"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Usage: ")  # hfmem --help ran, and pip's talk went to stderr (--json stays JSON)
    assert "Collecting torch" in run.stderr
    calls = _pip_calls(log)
    assert "-m pip install torch==2.13.0" in calls
    assert not any("--index-url" in call for call in calls)
    assert calls[-1] == f"-m pip install --quiet -e {ROOT}"  # the tool alone: no test tools
    assert "(CUDA) build" in run.stderr


def test_a_pyproject_change_reinstalls(tmp_path: Path) -> None:
    env, log = _fake_env(tmp_path, gpu=True)
    assert subprocess.run([str(ROOT / "scripts" / "hfmem"), "--version"], env=env, capture_output=True).returncode == 0
    stamp = Path(env["HFMEM_VENV"]) / ".hfmem-tool.stamp"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    assert digest in stamp.read_text()
    stamp.write_text(stamp.read_text().replace(digest, "0" * 64))  # as if pyproject.toml had been another file
    log.unlink()
    assert subprocess.run([str(ROOT / "scripts" / "hfmem"), "--version"], env=env, capture_output=True).returncode == 0
    assert _pip_calls(log)[-1] == f"-m pip install --quiet -e {ROOT}"
