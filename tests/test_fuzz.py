"""Fuzzing: no config.json and no command line makes hfmem print a traceback.

The strategies live in tests/fuzzing.py, shared with benchmarks/fuzz.py (which runs them for thousands of inputs
and records the figures in the README). Here they run briefly and deterministically (``derandomize``), and every
hypothesis failure prints the input. Under pytest the CLI re-raises unexpected exceptions instead of printing its
"internal error" line, so a bug shows up here as the exception itself. The hand-written cases below pin the
findings of the long runs: each one was a traceback, an "internal error" or a hang before it was fixed.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hfmem.cli import cli
from hfmem.errors import ExitCode
from tests.conftest import TINY_LLAMA
from tests.fuzzing import CHEAP_RUNS, ConfigCase, Outcome, command_lines, mutated_configs, run_cli

#: Hypothesis fuzzing of configs and command lines: slow marks, which the default suite deselects and CI runs.
pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


def assert_no_finding(outcome: Outcome, what: str) -> None:
    assert outcome.ok, f"{what}\n{outcome.kind} (exit {outcome.exit_code}):\n{outcome.detail}"


@FUZZ
@given(case=mutated_configs(always_shrink=True), run=st.sampled_from(CHEAP_RUNS))
def test_mutated_config_json_gives_a_result_or_one_error_line(case: ConfigCase, run: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = case.write(Path(folder))
        assert_no_finding(run_cli([str(path), *run]), case.label)


@pytest.fixture(scope="module")
def tiny_folder() -> object:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(TINY_LLAMA), encoding="utf-8")
        yield Path(folder)


@settings(FUZZ, max_examples=300)
@given(data=st.data())
def test_fuzzed_command_lines_give_a_result_or_one_error_line(tiny_folder: Path, data: st.DataObject) -> None:
    args = data.draw(command_lines(tiny_folder), label="args")
    assert_no_finding(run_cli(args), " ".join(args))


# --- what the long runs found -------------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def write_config(tmp_path: Path, config: dict[str, object] | str) -> str:
    text = config if isinstance(config, str) else json.dumps(config)
    (tmp_path / "config.json").write_text(text, encoding="utf-8")
    return str(tmp_path)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"num_hidden_layers": 10**12}, "num_hidden_layers = ~1e12, more than the 1,024 layers"),
        ({"num_hidden_layers": 1025}, "num_hidden_layers = 1,025, more than the 1,024 layers"),
        ({"hidden_size": 10**30}, "hidden_size = ~1e30"),
        ({"vocab_size": 2**31}, "vocab_size = 2,147,483,648"),
        ({"vocab_size": float("inf")}, "vocab_size = inf"),
        ({"num_labels": 10**9}, "num_labels = 1,000,000,000, more than the 1,000,000 units"),
        ({"text_config": {"num_hidden_layers": 10**6}}, "text_config.num_hidden_layers = 1,000,000"),
        ({"rope_scaling": {"a": {"b": json.loads("[" * 40 + "]" * 40)}}}, "more than 32 deep"),
    ],
)
def test_absurd_config_sizes_are_refused_before_building(
    tmp_path: Path, change: dict[str, object], fragment: str
) -> None:
    folder = write_config(tmp_path, {**TINY_LLAMA, **change})
    started = time.perf_counter()
    code, out, err = run(folder, "--training-only")
    assert time.perf_counter() - started < 10  # 10^12 layers ran out of memory before the bound
    assert (code, out) == (ExitCode.CONFIG, "")
    line = one_error_line(err)
    assert fragment in line and "fix" in line


def test_the_largest_real_sizes_pass_the_bounds(tmp_path: Path) -> None:
    # Llama-3.1-405B's 126 layers and 53,248-wide MLP, Gemma's 262,144-token vocabulary, a 10M-token context
    # (Llama 4 Scout's max_position_embeddings is 10,485,760): all far below the bounds.
    from hfmem.limits import check_config

    check_config(
        {
            "num_hidden_layers": 126,
            "intermediate_size": 53248,
            "vocab_size": 262144,
            "max_position_embeddings": 10_485_760,
            "n_routed_experts": 256,
            "rope_theta": 500000.0,
            "eos_token_id": [128001, 128008, 128009],
            "text_config": {"num_hidden_layers": 48, "rope_scaling": {"factor": 8.0}},
        },
        "meta-llama/Llama-4-Scout",
    )


@pytest.mark.parametrize("document", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 50_000 + "1" + "}" * 50_000])
def test_json_nested_thousands_deep_is_a_config_error(tmp_path: Path, document: str) -> None:
    code, _, err = run(write_config(tmp_path, document))
    assert code == ExitCode.CONFIG
    assert "nests JSON arrays or objects thousands deep" in one_error_line(err)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--seq-len", str(10**12)), "--seq-len ~1e12 is more than the 134,217,728 tokens"),
        (("--context", str(2**27 + 1)), "--context 134,217,729 is more than"),
        (("--batch-size", str(10**30)), "--batch-size ~1e30 is more than the 1,048,576 sequences"),
        (("--gpus", "1048576", "--nodes", "2"), "--gpus × --nodes 2,097,152 is more than the 1,048,576 GPUs"),
        (("--tp", str(10**400)), "--tp ~1e400"),
        (("--params", "1e999999"), "is more than the 1,000,000,000,000,000 parameters"),  # a million digits
        (("--params", "1e999999999"), "is not a parameter count"),  # past decimal's exponent range: Overflow
        (("--params", "7B", "--gpu-memory", "9" * 5000 + "GiB"), "is more than the 1 EiB"),
        (("--params", "2e15"), "is more than the 1,000,000,000,000,000 parameters"),
    ],
)
def test_absurd_option_values_are_refused(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    model = () if "--params" in args else (write_config(tmp_path, TINY_LLAMA),)
    code, out, err = run(*model, *args)
    assert (code, out) == (ExitCode.USAGE, "")
    assert fragment in one_error_line(err)


@pytest.mark.parametrize("model", ["org/bad\nname", "bad\x85name", "org/x\u2028y", "a\x0cb", "bad\udcffname"])
def test_errors_quoting_input_stay_one_line(model: str) -> None:
    code, _, err = run(model)
    assert code == ExitCode.USAGE
    assert len(err.splitlines()) == 1, err  # str.splitlines breaks on \x85, \x0c and \u2028 too
    assert repr(model)[1:-1] in err  # shown escaped


def test_option_values_quoted_by_click_stay_one_line() -> None:
    code, _, err = run("--params", "7\nX")
    assert code == ExitCode.USAGE
    assert "'7\\nX' is not a parameter count" in one_error_line(err)
    assert err.splitlines()[-1].startswith("Error: ")


def test_internal_errors_are_one_line_too(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("first line\nsecond line")

    monkeypatch.setattr("hfmem.cli._report", broken)
    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # as users see it: no re-raise
    code, out, err = run("--params", "7B")
    assert (code, out) == (ExitCode.INTERNAL, "")
    assert len(err.splitlines()) == 1 and "internal error (KeyError: 'first line\\nsecond line')" in err
    code, _, err = run("--params", "7B", "--debug")
    assert code == ExitCode.INTERNAL and "Traceback" in err and err.splitlines()[-1].startswith("Error: internal")


def test_a_model_name_too_long_for_the_os_is_an_invalid_id() -> None:
    code, _, err = run("x" * 300)  # Path.exists() raised ENAMETOOLONG
    assert code == ExitCode.USAGE
    assert "is not a local path and not a valid Hub repo id" in one_error_line(err)


def test_a_home_folder_of_nobody_is_no_such_path() -> None:
    code, _, err = run("~nobody-has-this-name/model")  # Path.expanduser() raised RuntimeError
    assert code == ExitCode.USAGE
    assert "no such file or directory" in one_error_line(err)


@pytest.mark.parametrize("auto_map", [[{"AutoConfig": "a.B"}], "a.B", 3])
def test_an_auto_map_that_is_not_an_object_is_a_config_error(tmp_path: Path, auto_map: object) -> None:
    code, _, err = run(write_config(tmp_path, {**TINY_LLAMA, "auto_map": auto_map}), "--training-only")
    assert code == ExitCode.CONFIG
    assert "'auto_map' that is a" in one_error_line(err)


def test_an_empty_auto_map_reference_is_not_a_crash(tmp_path: Path) -> None:
    config = {**TINY_LLAMA, "auto_map": {"AutoModelForCausalLM": []}}
    code, _, err = run(write_config(tmp_path, config), "--training-only", "--zero", "3")
    assert code == 0, err


@pytest.mark.parametrize("token", ["hf_é" + "a" * 30, "hf_abc\ndef0123", "hf_\x00" + "b" * 30])
def test_a_token_no_header_can_carry_is_refused_without_showing_it(token: str) -> None:
    code, out, err = run("org/some-model", "--token", token)
    assert (code, out) == (ExitCode.USAGE, "")
    assert "--token holds non-ASCII or control characters" in one_error_line(err)
    assert token not in err and repr(token)[1:-1] not in err


def test_a_non_ascii_hf_token_is_refused_without_showing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    token = "hf_\u00e9" + "c" * 30  # httpx raised UnicodeEncodeError quoting the 'é'
    monkeypatch.setenv("HF_TOKEN", token)
    code, _, err = run("org/some-model")
    assert code == ExitCode.USAGE
    line = one_error_line(err)
    assert "environment variable HF_TOKEN holds non-ASCII" in line  # checked up front (hfmem/environment.py)
    assert "\u00e9" not in err and "\\xe9" not in err and "ccccc" not in err
