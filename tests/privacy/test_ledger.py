import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fedlrs.privacy.ledger import (DuplicateReleaseError, Ledger, LedgerConflictError,
                                   LedgerCorruptError)

from .helpers import make_event

ROOT = Path(__file__).resolve().parents[2]


def _rounds(ledger, start, stop, **kw):
    for r in range(start, stop):
        ledger.record(make_event(f"round-{r}", round=r, **kw))


def test_record_and_epsilon_in_memory():
    ledger = Ledger()
    _rounds(ledger, 1, 201)
    assert len(ledger) == 200 and "round-7" in ledger and ledger.path is None
    assert ledger.epsilon(delta=1e-5) == pytest.approx(5.37, rel=0.01)


def test_duplicate_release_refused_and_nothing_written(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.record(make_event("round-1"))
    before = path.read_bytes()
    with pytest.raises(DuplicateReleaseError, match="round-1"):
        ledger.record(make_event("round-1", noise_multiplier=5.0))
    assert path.read_bytes() == before and len(ledger) == 1


def test_new_ledger_refuses_existing_file(tmp_path):
    path = tmp_path / "ledger.jsonl"
    Ledger(path).record(make_event())
    with pytest.raises(FileExistsError, match="Ledger.load"):
        Ledger(path)


def test_save_load_round_trip_keeps_composing(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.record(make_event("init", kind="init", noise_multiplier=4.0, sample_rate=1.0, round=0))
    _rounds(ledger, 1, 11)
    loaded = Ledger.load(path)
    assert loaded.events == ledger.events and loaded.recovery is None
    assert loaded.epsilon(delta=1e-5) == ledger.epsilon(delta=1e-5)
    _rounds(loaded, 11, 21)
    assert loaded.epsilon(delta=1e-5) > ledger.epsilon(delta=1e-5)
    assert Ledger.load(path).events == loaded.events


def test_second_writer_detected(tmp_path):
    path = tmp_path / "ledger.jsonl"
    first = Ledger(path)
    first.record(make_event("round-1"))
    second = Ledger.load(path)
    second.record(make_event("round-2", round=2))
    with pytest.raises(LedgerConflictError, match="another writer"):
        first.record(make_event("round-3", round=3))
    assert [e.release_id for e in Ledger.load(path).events] == ["round-1", "round-2"]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([0.8, 1.0, 2.5]), st.sampled_from([0.01, 0.05, 1.0]),
                          st.integers(1, 50)), min_size=1, max_size=8),
       st.integers(1, 5))
def test_property_save_load_keeps_epsilon_and_composes(tmp_path, history, extra):
    path = tmp_path / f"ledger-{os.urandom(6).hex()}.jsonl"
    ledger = Ledger(path)
    for i, (z, q, n) in enumerate(history):
        ledger.record(make_event(f"r{i}", noise_multiplier=z, sample_rate=q, count=n, round=i))
    loaded = Ledger.load(path)
    assert loaded.events == ledger.events
    assert loaded.epsilon(delta=1e-5) == ledger.epsilon(delta=1e-5)
    for j in range(extra):
        loaded.record(make_event(f"extra{j}", round=100 + j))
    again = Ledger.load(path)
    assert again.events == loaded.events
    assert again.epsilon(delta=1e-5) > ledger.epsilon(delta=1e-5)


def test_incomplete_final_line_dropped_then_truncated(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    _rounds(ledger, 1, 4)
    with open(path, "ab") as f:
        f.write(b'{"count": 1, "kind": "rou')  # torn write of round-4
    loaded = Ledger.load(path)
    assert len(loaded) == 3 and "dropped incomplete final line 5" in loaded.recovery
    loaded.record(make_event("round-4", round=4))
    reread = Ledger.load(path)
    assert [e.release_id for e in reread.events] == [f"round-{r}" for r in range(1, 5)]
    assert reread.recovery is None


def test_valid_final_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    _rounds(ledger, 1, 3)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    loaded = Ledger.load(path)
    assert len(loaded) == 2 and "kept final line" in loaded.recovery
    loaded.record(make_event("round-3", round=3))
    assert len(Ledger.load(path)) == 3


@pytest.mark.parametrize("mutate, message", [
    (lambda lines: lines[:1] + [b"not json"] + lines[2:], "line 2 is not a valid event"),
    (lambda lines: lines[:2] + [lines[1]] + lines[2:], "repeats release_id"),
    (lambda lines: [b'{"format": "other", "version": 1}'] + lines[1:], "header =="),
    (lambda lines: lines[:1] + [lines[1].replace(b'"count": 1', b'"count": 1, "epsilon": 0.1')]
     + lines[2:], "unknown event key 'epsilon'"),
])
def test_corrupt_lines_refused(tmp_path, mutate, message):
    path = tmp_path / "ledger.jsonl"
    _rounds(Ledger(path), 1, 4)
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"\n".join(mutate(lines)) + b"\n")
    with pytest.raises(LedgerCorruptError, match=message):
        Ledger.load(path)


def test_file_is_json_lines_with_header(tmp_path):
    path = tmp_path / "ledger.jsonl"
    Ledger(path).record(make_event())
    header, event = [json.loads(line) for line in path.read_text().splitlines()]
    assert header == {"format": "fedlrs-privacy-ledger", "version": 2, "budget": None, "plan": None}
    assert event == make_event().to_dict()


def test_header_records_budget_and_plan(tmp_path):
    path = tmp_path / "ledger.jsonl"
    budget = {"epsilon": 2.0, "delta": 1e-6, "accountant": "prv"}
    Ledger(path, budget=budget, plan={"rounds": 7, "sample_rate": 0.5}).record(make_event())
    loaded = Ledger.load(path)
    assert loaded.budget == budget and loaded.plan == {"rounds": 7, "sample_rate": 0.5}
    assert json.loads(path.read_text().splitlines()[0])["budget"] == budget


@pytest.mark.parametrize("budget, plan, message", [
    ({"epsilon": -1.0, "delta": 1e-6, "accountant": "rdp"}, None, "budget epsilon"),
    ({"epsilon": 1.0, "delta": 2.0, "accountant": "rdp"}, None, "delta =="),
    ({"epsilon": 1.0, "delta": 1e-6}, None, "exactly the keys"),
    (None, {"rounds": 2.5}, "plan rounds"),
    (None, {"epsilon": 1.0}, "keys among"),
])
def test_bad_header_refused(tmp_path, budget, plan, message):
    with pytest.raises(ValueError, match=message):
        Ledger(tmp_path / "ledger.jsonl", budget=budget, plan=plan)
    path = tmp_path / "edited.jsonl"
    header = {"format": "fedlrs-privacy-ledger", "version": 2, "budget": budget, "plan": plan}
    path.write_text(json.dumps(header) + "\n")
    with pytest.raises(LedgerCorruptError, match=message):
        Ledger.load(path)


def test_version_1_ledger_still_loads_and_continues(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps({"format": "fedlrs-privacy-ledger", "version": 1}) + "\n"
                    + json.dumps(make_event().to_dict()) + "\n")
    loaded = Ledger.load(path)
    assert loaded.budget is None and loaded.plan is None and len(loaded) == 1
    loaded.record(make_event("round-2", round=2))
    assert len(Ledger.load(path)) == 2


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _rounds(Ledger(path), 1, 3)
    path.write_bytes(path.read_bytes() + b"\n")  # an editor's trailing blank line
    loaded = Ledger.load(path)
    assert len(loaded) == 2 and loaded.recovery is None
    loaded.record(make_event("round-3", round=3))
    assert [e.round for e in Ledger.load(path).events] == [1, 2, 3]


def test_sigkill_mid_run_loses_no_release(tmp_path):
    path = tmp_path / "ledger.jsonl"
    writer = subprocess.Popen([sys.executable, str(Path(__file__).with_name("ledger_writer.py")),
                               str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    released = []
    try:
        for line in writer.stdout:
            released.append(line.strip())
            if len(released) >= 40:
                break
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL
    ledger = Ledger.load(path)
    recorded = [e.release_id for e in ledger.events]
    assert recorded[:len(released)] == released  # every release that happened is there
    assert recorded == [f"round-{r}" for r in range(1, len(recorded) + 1)]
    before = ledger.epsilon(delta=1e-5)
    with pytest.raises(DuplicateReleaseError):
        ledger.record(make_event(released[-1], round=len(released)))
    n = len(recorded)
    ledger.record(make_event(f"round-{n + 1}", round=n + 1))
    assert ledger.epsilon(delta=1e-5) > before
    assert len(Ledger.load(path)) == n + 1


def test_record_refuses_non_events():
    with pytest.raises(TypeError, match="must be a DpEvent"):
        Ledger().record({"release_id": "x"})


def test_move_aside_renames_and_never_deletes(tmp_path):
    from fedlrs.privacy.ledger import move_aside

    run = tmp_path / "run"
    Ledger(run / "ledger.jsonl").record(make_event())
    before = (run / "ledger.jsonl").read_bytes()
    first = move_aside(run)
    Ledger(run / "ledger.jsonl")
    second = move_aside(run)
    assert not run.exists() and first != second
    assert first.name.startswith("run.old-") and (first / "ledger.jsonl").read_bytes() == before
    assert len(Ledger.load(second / "ledger.jsonl")) == 0


def test_run_folder_is_new_and_unique_under_the_runs_root(tmp_path, monkeypatch):
    from fedlrs.privacy.ledger import run_folder

    monkeypatch.setenv("FEDLRS_RUNS", str(tmp_path))
    first, second = run_folder("nn-x-eps1-seed1"), run_folder("nn-x-eps1-seed1")
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == tmp_path / "ledgers" and first.name.startswith("nn-x-eps1-seed1-")
