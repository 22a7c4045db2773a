"""The command line under hostile use: errors in one line (exit 2), no data in any output, runs never lose a ledger."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from fedlrs.cli import app
from fedlrs.privacy import Ledger, audit_report

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--users", "60", "--examples", "10", "--dim", "6", "--rank", "2", "--sparsity", "1", "--rounds", "2"]
runner = CliRunner()


def _fedlrs(*args, timeout=300):
    """``fedlrs ARGS`` in a subprocess, as a user runs it (real stderr, typer's real exception handler)."""
    return subprocess.run([sys.executable, "-m", "fedlrs.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"})


def _commands(command: click.Command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _letters(text: str) -> str:
    """Letters, digits and brackets only: what survives line wrapping and rich's boxes."""
    return re.sub(r"[^A-Za-z0-9\[\]]", "", text)


def test_help_shows_every_word_of_every_option():
    for path, command in _commands(typer.main.get_command(app)):
        output = _letters(runner.invoke(app, [*path, "--help"], env={"COLUMNS": "120"}).output)
        for param in command.params:
            text = _letters((getattr(param, "help", None) or "").replace("\\[", "["))
            assert text in output, f"fedlrs {' '.join(path)} --help loses words of {param.name}: {param.help!r}"
    assert "[examplesexamplesmax]" in _letters(runner.invoke(app, ["simulate", "--help"]).output)


def test_noise_nan_prints_one_line_without_data():
    result = _fedlrs("simulate", *SMALL, "--noise", "nan")
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2 and lines == ["error: noise == nan, must be a finite number >= 0."]


@pytest.mark.parametrize("args, message", [
    (["--epsilon", "-1"], "target_epsilon == -1.0"),
    (["--rank", "11", "--dim", "10"], "rank == 11"),
    (["--noise-multiplier", "1e-300", "--epsilon", "1"], "too small to account"),
    (["--epsilon", "1e-4", "--delta", "1e-9"], "reaches target_epsilon"),
    (["--mode", "nope"], "mode == 'nope'"),
    (["--device", "nope"], "device == 'nope' is not available"),
    (["--sample-rate", "nan"], "sample_rate == nan"),
    (["--clip-g", "nan", "--epsilon", "1"], "clip_g == nan"),
])
def test_expected_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    result = runner.invoke(app, ["simulate", *SMALL, *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "ledger.jsonl").write_bytes(b"\xff\xfe not a ledger")
    for args in (["privacy", "report", str(tmp_path / "ledger.jsonl"), "--out", str(tmp_path / "o")],
                 ["privacy", "report", str(tmp_path), "--out", str(tmp_path / "o")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and result.output.startswith("error: "), result.output
        assert len(result.output.strip().splitlines()) == 1


def test_unexpected_error_is_a_short_traceback_without_local_variables():
    code = ("import fedlrs.cli as cli, fedlrs.simulations.engine as engine\n"
            "def broken(*args, **kwargs):\n"
            "    secret_local = 'USER-DATA-1234'\n"
            "    raise RuntimeError('an unexpected failure')\n"
            "engine.run_engine = broken\n"
            "cli.main()\n")
    result = subprocess.run([sys.executable, "-c", code, "simulate", *SMALL], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"})
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "RuntimeError: an unexpected failure" in output
    assert "USER-DATA-1234" not in output and len(output.splitlines()) < 80


def test_a_failing_run_leaves_the_previous_run_untouched(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["simulate", *SMALL, "--epsilon", "4", "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = runner.invoke(app, ["simulate", *SMALL, "--epsilon", "1e-4", "--delta", "1e-9", "--out", str(out),
                                 "--overwrite"])
    assert result.exit_code == 2 and "reaches target_epsilon" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and list(tmp_path.iterdir()) == [out]


def test_simulate_prints_each_round_as_it_finishes_into_a_pipe(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "fedlrs.cli", "simulate", "--users", "300", "--dim", "8",
                                "--rank", "2", "--sparsity", "1", "--rounds", "400", "--out", str(tmp_path / "r")],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = [process.stdout.readline() for _ in range(2)]  # arrives while the run goes on
        assert process.poll() is None
        assert first[0].startswith("round 0: ") and first[1].startswith("round 1: ") and "distance=" in first[1]
    finally:
        process.kill()
        process.wait()


def _event_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") - 1 if path.exists() else 0


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_keeps_every_release(tmp_path):
    """Issue 17, row 1: a killed private run's ledger is never lost by re-running the same command."""
    out = tmp_path / "run"
    command = ["simulate", "--users", "400", "--dim", "10", "--rank", "2", "--sparsity", "1", "--rounds", "300",
               "--epsilon", "8", "--delta", "1e-6", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "fedlrs.cli", *command], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    ledger = out / "ledger.jsonl"
    deadline = time.monotonic() + 240
    while _event_lines(ledger) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed mid-run"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = ledger.read_bytes()
    events = Ledger.load(ledger).events
    assert len(events) >= 3 and events[0].kind == "init"

    again = _fedlrs(*command)
    assert again.returncode == 2 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1
    assert ledger.read_bytes() == killed  # every line of the killed run, untouched

    small = ["--rounds", "2", "--users", "60"]  # the user starts over, explicitly
    again = _fedlrs(*command, *small, "--overwrite")
    assert again.returncode == 0, again.stderr
    (aside,) = tmp_path.glob("run.old-*")
    assert (aside / "ledger.jsonl").read_bytes() == killed
    assert audit_report(out / "privacy_report.json").ok
    assert json.loads((out / "privacy_report.json").read_text())["ledger"]["path"] == str(ledger)
