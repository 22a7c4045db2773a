"""The privacy ledger: an append-only, crash-safe record of every release.

File format (JSON lines, UTF-8)::

    {"budget": {"accountant": "rdp", "delta": 1e-06, "epsilon": 4.0}, "format": "fedlrs-privacy-ledger",
     "plan": {"noise_multiplier": 1.9, "rounds": 10, "sample_rate": 1.0}, "version": 2}
    {"count": 1, "kind": "init", "mechanism": "poisson_gaussian", ...}
    {"count": 1, "kind": "round", ...}

The first line is a header; every other line is one :class:`DpEvent`
(``DpEvent.to_dict``). The header records the run's budget (epsilon, delta,
accountant) and plan (rounds, sample rate, noise multipliers), each ``null``
when unknown, so that :mod:`.audit` can check a report's budget, delta and plan
against the file the releases were recorded in. Blank lines are ignored.

Migration: version 1 headers (``{"format": ..., "version": 1}``, no budget, no
plan) are still read, with ``budget`` and ``plan`` None; the audit then says
that the budget could not be checked against the ledger. New ledgers are written
as version 2. :meth:`Ledger.record` writes the line, flushes and
``os.fsync``s it before returning, and the caller releases only after it
returns: so every release that happened is in the file, even after a SIGKILL
or a power cut.

Crash recovery (:meth:`Ledger.load`), conservative by construction:

* every complete line (ending in a newline) must be a valid event, with a
  unique ``release_id``; otherwise loading is refused (:class:`LedgerCorruptError`);
* an incomplete *final* line (no newline) is the trace of a ``record`` that
  never returned, so its release never happened. If it still parses as a valid
  event it is **kept** (accounting more is safe) and its newline is restored
  on the next write; if it does not parse it is **dropped** and truncated away
  on the next write. ``Ledger.recovery`` says which happened.

Epsilon is never stored: :meth:`Ledger.epsilon` recomputes it from the events.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import math
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedlrs.privacy.accountants import (Accountant, EpsilonResult, compute_epsilon, validate_accountant,
                                        validate_delta)
from fedlrs.privacy.events import DpEvent, InvalidEventError

LEDGER_FORMAT = "fedlrs-privacy-ledger"
LEDGER_VERSION = 2
#: the plan keys a header may hold (each optional)
PLAN_KEYS = ("rounds", "sample_rate", "noise_multiplier", "init_noise_multiplier")

_LOG = logging.getLogger(__name__)


class LedgerError(RuntimeError):
    """Base class of the ledger's errors."""


class DuplicateReleaseError(LedgerError):
    """An event's ``release_id`` is already in the ledger (a replayed release)."""


class LedgerCorruptError(LedgerError):
    """A ledger file cannot be trusted: bad header, malformed or duplicated line."""


class LedgerConflictError(LedgerError):
    """The file changed under this ledger (another writer), or a write failed half-way."""


def _positive(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)


def validate_header_budget(budget: Any) -> dict[str, Any] | None:
    """``budget`` as stored in a header: None, or ``{"epsilon" > 0, "delta" in (0, 1), "accountant"}``."""
    if budget is None:
        return None
    if not isinstance(budget, Mapping) or set(budget) != {"epsilon", "delta", "accountant"}:
        raise ValueError(f"budget == {budget!r}, must be None or have exactly the keys epsilon, delta, accountant.")
    if not _positive(budget["epsilon"]):
        raise ValueError(f"budget epsilon == {budget['epsilon']!r}, must be a finite number > 0.")
    validate_delta(budget["delta"])
    validate_accountant(budget["accountant"])
    return {"epsilon": float(budget["epsilon"]), "delta": float(budget["delta"]),
            "accountant": budget["accountant"]}


def validate_header_plan(plan: Any) -> dict[str, Any] | None:
    """``plan`` as stored in a header: None, or some of :data:`PLAN_KEYS` (rounds an int >= 0, the rest > 0 or None)."""
    if plan is None:
        return None
    if not isinstance(plan, Mapping) or not set(plan) <= set(PLAN_KEYS):
        raise ValueError(f"plan == {plan!r}, must be None or a mapping with keys among {list(PLAN_KEYS)}.")
    for key, value in plan.items():
        if key == "rounds":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"plan rounds == {value!r}, must be an integer >= 0.")
        elif value is not None and not _positive(value):
            raise ValueError(f"plan {key} == {value!r}, must be a finite number > 0 or None.")
    return {k: plan[k] if k == "rounds" or plan[k] is None else float(plan[k]) for k in PLAN_KEYS if k in plan}


def _header(budget: dict[str, Any] | None, plan: dict[str, Any] | None) -> dict[str, Any]:
    return {"format": LEDGER_FORMAT, "version": LEDGER_VERSION, "budget": budget, "plan": plan}


def _header_bytes(header: dict[str, Any]) -> bytes:
    return (json.dumps(header, sort_keys=True, allow_nan=False) + "\n").encode()


def _parse_header(raw: bytes, path: Path) -> dict[str, Any]:
    """The header of a version 1 or 2 ledger, as a version 2 header (version 1: no budget, no plan)."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LedgerCorruptError(f"{path}: header is not JSON: {error}") from error
    if header == {"format": LEDGER_FORMAT, "version": 1}:
        return {**header, "budget": None, "plan": None}
    if not isinstance(header, dict) or set(header) != {"format", "version", "budget", "plan"} \
            or header["format"] != LEDGER_FORMAT or header["version"] != LEDGER_VERSION:
        raise LedgerCorruptError(
            f"{path}: header == {header!r}, must be {{'format': {LEDGER_FORMAT!r}, 'version': {LEDGER_VERSION}, "
            f"'budget': ..., 'plan': ...}} (or a version 1 header).")
    try:
        validate_header_budget(header["budget"])
        validate_header_plan(header["plan"])
    except ValueError as error:
        raise LedgerCorruptError(f"{path}: header: {error}") from error
    return header


def _event_bytes(event: DpEvent) -> bytes:
    line = json.dumps(event.to_dict(), sort_keys=True, allow_nan=False)
    if DpEvent.from_dict(json.loads(line)) != event:  # exact round trip or nothing
        raise InvalidEventError(f"event {event.release_id!r} does not survive JSON round trip.")
    return (line + "\n").encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_event_line(raw: bytes, *, line_no: int, path: Path) -> DpEvent:
    try:
        data = json.loads(raw.decode("utf-8"))
        return DpEvent.from_dict(data)
    except (UnicodeDecodeError, json.JSONDecodeError, InvalidEventError, TypeError) as error:
        raise LedgerCorruptError(f"{path}: line {line_no} is not a valid event: {error}") from error


def run_folder(label: str, root: str | os.PathLike[str] | None = None) -> Path:
    """A new, unique folder ``<root>/ledgers/<label>-<UTC time>-<random>`` for a run whose ledger is not
    kept with an experiment's results (root: ``$FEDLRS_RUNS``, else ``runs``); nothing in it is ever deleted."""
    base = Path(root if root is not None else os.environ.get("FEDLRS_RUNS", "runs")) / "ledgers"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = base / f"{label}-{stamp}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    return folder


def move_aside(folder: str | os.PathLike[str]) -> Path:
    """Rename ``folder`` (a run's output, its ledger included) to ``<folder>.old-<UTC time>``; never deletes.

    Returns the new path. A ledger is evidence of releases that happened: a run that
    starts over keeps the old one, under a name that says it is old.
    """
    folder = Path(folder)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, k = folder.with_name(f"{folder.name}.old-{stamp}"), 1
    while target.exists():
        k += 1
        target = folder.with_name(f"{folder.name}.old-{stamp}-{k}")
    os.rename(folder, target)
    return target


class Ledger:
    """Append-only record of :class:`DpEvent` s, in memory (``path=None``) or in a file.

    ``Ledger(path)`` starts a *new* ledger and refuses an existing non-empty
    file; continue an existing one with :meth:`Ledger.load`. ``budget``
    (``{"epsilon", "delta", "accountant"}``) and ``plan`` (some of
    :data:`PLAN_KEYS`) are written into the header.

    Examples
    --------
    >>> from fedlrs.privacy.events import DpEvent
    >>> ledger = Ledger()
    >>> ledger.record(DpEvent(release_id="round-1", kind="round", noise_multiplier=1.0,
    ...                       sample_rate=0.05, count=200, round=1, time=0.0))
    >>> round(ledger.epsilon(delta=1e-5), 2)
    5.37
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 budget: Mapping[str, Any] | None = None, plan: Mapping[str, Any] | None = None) -> None:
        self._path = None if path is None else Path(path)
        self.header = _header(validate_header_budget(budget), validate_header_plan(plan))
        self._events: list[DpEvent] = []
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._size = 0  # bytes of the file this ledger knows about
        self._repair: bytes | int | None = None  # b"\n" to append, or offset to truncate to
        self._broken: str | None = None
        self.recovery: str | None = None
        if self._path is not None:
            if self._path.exists() and self._path.stat().st_size > 0:
                raise FileExistsError(
                    f"path == '{self._path}' already holds a ledger; use Ledger.load(path) to continue it.")
            self._path.parent.mkdir(parents=True, exist_ok=True)
            header = _header_bytes(self.header)
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".ledger-", suffix=".tmp")
            try:
                os.write(fd, header)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._path)  # atomic: the file exists with its header, or not at all
            _fsync_dir(self._path.parent)
            self._size = len(header)

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Ledger:
        """Load a ledger file exactly, validating every line (see the module docstring)."""
        path = Path(path)
        data = path.read_bytes()
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if not lines:
            raise LedgerCorruptError(f"{path}: no complete header line; not a fedlrs ledger.")
        ledger = cls.__new__(cls)
        ledger.header = _parse_header(lines[0], path)
        ledger._path = path
        ledger._events, ledger._ids = [], set()
        ledger._lock = threading.Lock()
        ledger._size = len(data)
        ledger._repair, ledger._broken, ledger.recovery = None, None, None
        for line_no, raw in enumerate(lines[1:], start=2):
            if not raw.strip():  # a blank line (an editor's trailing newline) is no event
                continue
            ledger._append_loaded(_parse_event_line(raw, line_no=line_no, path=path),
                                  line_no=line_no)
        if tail.strip():
            line_no = len(lines) + 1
            try:
                event = _parse_event_line(tail, line_no=line_no, path=path)
            except LedgerCorruptError:
                ledger._repair = len(data) - len(tail)
                ledger.recovery = (f"dropped incomplete final line {line_no} "
                                   f"({len(tail)} bytes, not a valid event): its record() never "
                                   f"returned, so it was never released.")
            else:
                ledger._append_loaded(event, line_no=line_no)
                ledger._repair = b"\n"
                ledger.recovery = (f"kept final line {line_no} without newline "
                                   f"(valid event {event.release_id!r}; accounting it is conservative).")
            _LOG.warning("%s: %s", path, ledger.recovery)
        return ledger

    def _append_loaded(self, event: DpEvent, *, line_no: int) -> None:
        if event.release_id in self._ids:
            raise LedgerCorruptError(
                f"{self._path}: line {line_no} repeats release_id {event.release_id!r}.")
        self._events.append(event)
        self._ids.add(event.release_id)

    @property
    def path(self) -> Path | None:
        """The file, or None for an in-memory ledger."""
        return self._path

    @property
    def budget(self) -> dict[str, Any] | None:
        """The budget in the header (``{"epsilon", "delta", "accountant"}``), or None (unknown, version 1)."""
        return self.header["budget"]

    @property
    def plan(self) -> dict[str, Any] | None:
        """The plan in the header (some of :data:`PLAN_KEYS`), or None (unknown, version 1)."""
        return self.header["plan"]

    def save_as(self, path: str | os.PathLike[str]) -> Ledger:
        """A file ledger at ``path`` holding this ledger's header and events, in order (a new file: an
        existing ledger there is refused, never overwritten). Persists an in-memory ledger for its report."""
        saved = Ledger(path, budget=self.budget, plan=self.plan)
        for event in self._events:
            saved.record(event)
        return saved

    @property
    def events(self) -> tuple[DpEvent, ...]:
        """All recorded events, in recording order."""
        return tuple(self._events)

    def __len__(self) -> int:
        """Number of recorded events (not releases: an event may have ``count > 1``)."""
        return len(self._events)

    def __contains__(self, release_id: object) -> bool:
        """Whether an event with this ``release_id`` was recorded."""
        return release_id in self._ids

    def account(self, *, delta: float, accountant: Accountant = "rdp") -> EpsilonResult:
        """Epsilon of all recorded events at ``delta``, with the accountant actually used."""
        return compute_epsilon(self._events, delta=delta, accountant=accountant)

    def epsilon(self, *, delta: float, accountant: Accountant = "rdp") -> float:
        """Epsilon of all recorded events at ``delta``, recomputed now (no running total)."""
        return self.account(delta=delta, accountant=accountant).epsilon

    # ------------------------------------------------------------------ writing
    def record(self, event: DpEvent) -> None:
        """Append ``event``; returns only once it is durably on disk.

        Checks first (type, unique ``release_id``, exact JSON round trip, the
        file has not changed under us), commits second: the line is written
        with ``O_APPEND``, ``os.fsync``ed, and only then added to memory.

        Raises
        ------
        DuplicateReleaseError
            ``event.release_id`` is already recorded: a replayed release is
            never counted twice, and must not be released again either.
        LedgerConflictError
            Another writer appended to the file, or an earlier write failed.
        """
        if not isinstance(event, DpEvent):
            raise TypeError(f"event == {event!r}, must be a DpEvent.")
        with self._lock:
            if self._broken is not None:
                raise LedgerConflictError(self._broken)
            if event.release_id in self._ids:
                raise DuplicateReleaseError(
                    f"release_id == {event.release_id!r} is already in the ledger; "
                    f"a release is recorded (and made) once.")
            line = _event_bytes(event)
            if self._path is not None:
                self._write(line)
            self._events.append(event)
            self._ids.add(event.release_id)

    def _write(self, line: bytes) -> None:
        assert self._path is not None
        fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size != self._size:
                raise LedgerConflictError(
                    f"{self._path} is {size} bytes, this ledger knows {self._size}: another writer "
                    f"changed it. Reload it with Ledger.load.")
            try:
                if isinstance(self._repair, int):
                    os.ftruncate(fd, self._repair)
                    self._size = self._repair
                elif self._repair is not None:
                    line = self._repair + line
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException as error:
                self._broken = (f"a write to {self._path} failed ({error!r}); its state is unknown. "
                                f"Reload it with Ledger.load.")
                raise
            self._size += len(line)
            self._repair = None
        finally:
            os.close(fd)  # also releases the flock
