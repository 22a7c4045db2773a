"""Hostile input: property-based fuzzing of every reply the billboard accepts and every file the loader reads.

The promise (docs/threat-model.md): a reply that is not exactly a valid clipped
contribution is refused with a logged reason; it never crashes the server, never
changes ``U`` and never touches the ledger. A node's data file that is not a
well-formed table of real, finite numbers is refused with a :class:`DataError`.
"""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedlrs.client.app import make_client_app
from fedlrs.client.data import DataError, load_user_data, read_table
from fedlrs.federation_config import parse_run_config
from fedlrs.protocol import RefusedReply, expected_parts, validate_reply
from fedlrs.server.billboard import Billboard

from .conftest import SMALL
from .fakes import FakeGrid

NODES = 4
HOSTILE = 2  # the node whose replies are replaced
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
BASE = {**SMALL, "dim": 4, "rank": 1, "data-examples": 6, "num-server-rounds": 1, "private": True,
        "noise-multiplier": 1.0, "init-noise-multiplier": 2.0, "noise-seed": 0, "target-epsilon": 100.0,
        "round-timeout": 0.05, "starts": 1}
PHASES = {"ls": ("moments", "round"), "gd": ("round",)}


# ---------------------------------------------------------------------------------------- strategies
def _parts(mode: str, phase: str) -> dict:
    return expected_parts(parse_run_config({**BASE, "mode": mode}), phase, bound=1.0)  # gd: the unit-free step's parts at bound 1


_DTYPES = st.sampled_from(["float64", "float32", "float16", "int64", "int8", "uint8", "bool", "complex128"])
_SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf, 1e308, -1e308, 1e30, 5e-324])


@st.composite
def hostile_arrays(draw, shape: tuple[int, ...], bound: float) -> Array:
    """One array that breaks the protocol: wrong dtype, wrong shape, non-finite, too large, or undecodable bytes."""
    kind = draw(st.sampled_from(["special", "unclipped", "dtype", "shape", "bytes", "bytes-lie"]))
    if kind == "special":  # NaN / inf / huge somewhere in an otherwise small array
        value = np.zeros(shape)
        flat = value.reshape(-1)
        for index in draw(st.lists(st.integers(0, flat.size - 1), min_size=1, max_size=3)):
            flat[index] = draw(_SPECIAL)
        assume(not (np.isfinite(value).all() and np.linalg.norm(value) <= bound))
        return Array(value)
    if kind == "unclipped":  # finite, right shape and dtype, norm just or far above the bound
        direction = draw(hnp.arrays(np.float64, shape, elements=st.floats(-1, 1)))
        assume(np.linalg.norm(direction) > 1e-3)
        factor = draw(st.sampled_from([1 + 1e-6, 1.5, 1e3, 1e200]))
        return Array(direction / np.linalg.norm(direction) * bound * factor)
    if kind == "dtype":
        dtype = draw(_DTYPES.filter(lambda d: d != "float64"))
        return Array(np.zeros(shape, dtype=dtype))
    if kind == "shape":
        wrong = draw(st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple).filter(lambda s: s != shape))
        return Array(np.zeros(wrong))
    data = draw(st.binary(max_size=8 * int(np.prod(shape)) + 16))
    if kind == "bytes":  # random payload claiming the right dtype and shape
        return Array(dtype="float64", shape=shape, stype="numpy.ndarray", data=data)
    claimed = draw(st.lists(st.integers(-3, 8), max_size=3).map(tuple))  # shapes that need not be valid at all
    return Array(dtype=draw(st.sampled_from(["float64", "<f8", "x", ""])), shape=claimed,
                 stype=draw(st.sampled_from(["numpy.ndarray", "torch.Tensor", "pickle"])), data=data)


@st.composite
def hostile_contents(draw, parts: dict) -> RecordDict:
    """A reply content that is not exactly the ArrayRecord ``contribution`` with valid parts."""
    kind = draw(st.sampled_from(["bad-array", "missing-key", "extra-key", "extra-record", "wrong-record",
                                 "empty", "renamed"]))
    valid = {name: Array(np.zeros(shape)) for name, (shape, _) in parts.items()}
    if kind == "bad-array":
        name = draw(st.sampled_from(sorted(parts)))
        shape, bound = parts[name]
        return RecordDict({"contribution": ArrayRecord({**valid, name: draw(hostile_arrays(shape, bound))})})
    if kind == "missing-key":
        name = draw(st.sampled_from(sorted(parts)))
        return RecordDict({"contribution": ArrayRecord({k: v for k, v in valid.items() if k != name})})
    if kind == "extra-key":
        extra = draw(st.sampled_from(["loss", "num-examples", "w", "b", "U"]))
        return RecordDict({"contribution": ArrayRecord({**valid, extra: Array(np.zeros(1))})})
    if kind == "extra-record":
        other = draw(st.sampled_from([MetricRecord({"num-examples": 12}), ConfigRecord({"round": 1}),
                                      ArrayRecord({"w": Array(np.zeros(2))})]))
        return RecordDict({"contribution": ArrayRecord(valid), draw(st.sampled_from(["metrics", "x", "state"])): other})
    if kind == "wrong-record":  # the right name holding the wrong kind of record
        return RecordDict({"contribution": draw(st.sampled_from([MetricRecord({"A": 1.0}), ConfigRecord({"A": "x"})]))})
    if kind == "empty":
        return RecordDict()
    return RecordDict({draw(st.sampled_from(["Contribution", "contributions", "billboard"])): ArrayRecord(valid)})


def _request(round_number: int = 1, message_type: str = "train") -> Message:
    message = Message(RecordDict({"round-config": ConfigRecord({"round": round_number})}), dst_node_id=HOSTILE,
                      message_type=message_type, group_id=str(round_number), ttl=60)
    message.metadata.__dict__["_message_id"] = f"request-{round_number}"
    return message


# --------------------------------------------------------------------------------- validate_reply alone
@pytest.mark.parametrize("mode,phase", [("ls", "moments"), ("ls", "round"), ("gd", "round")])
@settings(FAST, max_examples=200)
@given(data=st.data())
def test_validate_reply_refuses_every_hostile_content(mode, phase, data):
    parts = _parts(mode, phase)
    content = data.draw(hostile_contents(parts))
    reply = Message(content, reply_to=_request())
    try:
        tensors = validate_reply(reply, parts, torch.float64)
    except RefusedReply as error:
        assert str(error)  # a reason
        return
    # only a random payload may happen to decode to a valid contribution; then it must meet the contract
    assert set(tensors) == set(parts)
    for name, (shape, bound) in parts.items():
        assert tuple(tensors[name].shape) == shape and tensors[name].dtype == torch.float64
        assert torch.isfinite(tensors[name]).all() and float(tensors[name].norm()) <= bound * (1 + 1e-9)


def test_validate_reply_refuses_an_error_reply():
    reply = Message(Error(code=0, reason="boom"), reply_to=_request())
    with pytest.raises(RefusedReply, match="boom"):
        validate_reply(reply, _parts("ls", "round"), torch.float64)


# ------------------------------------------------------------------------------- the billboard, end to end
_REFERENCE: dict = {}


def _events(ledger) -> list[dict]:
    return [{k: v for k, v in e.to_dict().items() if k != "time"} for e in ledger.events]


def _billboard(mode: str, tamper, rounds: int = 1):
    overrides = {**BASE, "mode": mode, "num-server-rounds": rounds}
    return Billboard(parse_run_config(overrides)).run(FakeGrid(make_client_app(overrides), NODES, tamper=tamper))


def _replace(phase: str, content_of, rounds=(1,)):
    """A tamper that replaces node HOSTILE's reply in ``phase`` (moments: round 0) by ``content_of(message, reply)``."""
    message_type = "train.moments" if phase == "moments" else "train"

    def tamper(node, message, reply):
        if node != HOSTILE or message.metadata.message_type != message_type:
            return reply
        if phase == "round" and int(message.metadata.group_id) not in rounds:
            return reply
        return content_of(message, reply)

    return tamper


def _reference(mode: str, phase: str, rounds: int = 1):
    """U and ledger of the run where node HOSTILE answers with an error in ``phase``: its reply is not counted."""
    key = (mode, phase, rounds)
    if key not in _REFERENCE:
        error = _replace(phase, lambda m, r: Message(Error(code=0, reason="reference"), reply_to=m),
                         rounds=tuple(range(1, rounds + 1)) if phase == "round" else (1,))
        result = _billboard(mode, error, rounds)
        _REFERENCE[key] = (result.U.clone(), _events(result.ledger))
    return _REFERENCE[key]


@pytest.mark.parametrize("mode,phase", [("ls", "moments"), ("ls", "round"), ("gd", "round")])
@settings(FAST, max_examples=30)
@given(data=st.data())
def test_a_hostile_reply_neither_crashes_nor_changes_U_nor_touches_the_ledger(mode, phase, data):
    parts = _parts(mode, phase)
    content = data.draw(hostile_contents(parts))
    result = _billboard(mode, _replace(phase, lambda message, reply: Message(content, reply_to=message)))
    round_number = 0 if phase == "moments" else 1
    U, events = _reference(mode, phase)
    if [(r.round, r.node_id) for r in result.refusals] == [(round_number, HOSTILE)]:
        assert result.refusals[0].reason
        assert torch.allclose(result.U, U, atol=1e-12, rtol=0)  # equal up to LAPACK's last-bit jitter
        assert _events(result.ledger) == events
    else:  # a random payload that decodes to a valid contribution is counted like any honest one
        assert not result.refusals
    assert result.rounds_completed == 1 and torch.isfinite(result.U).all()


def test_refusals_are_logged_with_their_reason(caplog):
    bad = RecordDict({"contribution": ArrayRecord({"A": Array(np.full((4, 4), np.nan)), "c": Array(np.zeros(4))})})
    logger = logging.getLogger("flwr")
    logger.addHandler(caplog.handler)
    try:
        result = _billboard("ls", _replace("round", lambda message, reply: Message(bad, reply_to=message)))
    finally:
        logger.removeHandler(caplog.handler)
    assert [r.reason for r in result.refusals] == ["A holds NaN or inf."]
    assert "round 1: refused the reply of node 2: A holds NaN or inf." in caplog.text


def test_a_replayed_reply_of_an_old_round_is_not_counted():
    """Node 2 answers round 2 with its own reply of round 1: it refers to round 1's message and is never pulled."""
    old = {}

    def replay(node, message, reply):
        if node != HOSTILE or message.metadata.message_type != "train":
            return reply
        if message.metadata.group_id == "1":
            old["reply"] = reply
            return reply
        return old["reply"]

    result = _billboard("ls", replay, rounds=2)
    assert (2, HOSTILE) in result.dropped and not result.refusals
    # the same U and ledger as when node 2 answers round 2 with an error
    error = _replace("round", lambda m, r: Message(Error(code=0, reason="x"), reply_to=m), rounds=(2,))
    reference = _billboard("ls", error, rounds=2)
    assert torch.allclose(result.U, reference.U, atol=1e-12, rtol=0) and _events(result.ledger) == _events(reference.ledger)


class _EchoGrid(FakeGrid):
    """A grid that delivers node HOSTILE's reply twice, and one reply from a node that was never asked."""

    def pull_messages(self, message_ids):
        pulled = super().pull_messages(message_ids)
        extra = []
        for reply in pulled:
            if int(reply.metadata.src_node_id) == HOSTILE:
                extra.append(reply)  # duplicate
                stranger = Message(reply.content, reply_to=_request(int(reply.metadata.group_id)))
                stranger.metadata.__dict__["_src_node_id"] = 99
                extra.append(stranger)
        return pulled + extra


def test_a_duplicate_reply_and_a_reply_from_a_node_not_asked_are_refused():
    overrides = {**BASE, "num-server-rounds": 2}
    honest = Billboard(parse_run_config(overrides)).run(FakeGrid(make_client_app(overrides), NODES))
    result = Billboard(parse_run_config(overrides)).run(_EchoGrid(make_client_app(overrides), NODES))
    reasons = sorted({(r.node_id, r.reason) for r in result.refusals})
    assert reasons == [(HOSTILE, "a second reply from the same node."), (99, "the node was not sampled in this round.")]
    assert torch.allclose(result.U, honest.U, atol=1e-12, rtol=0) and _events(result.ledger) == _events(honest.ledger)


# ------------------------------------------------------------------------------------------- loaders
DIM = 3
_CELL = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                  st.sampled_from(["", "nan", "inf", "-inf", "1e400", "abc", "NULL", "\"1,2\"", "0x10", "1_000"]),
                  st.text(max_size=4))
_HEADER = st.lists(st.sampled_from(["x0", "x1", "x2", "x3", "y", "Y", "x0 ", "", "z"]), min_size=0, max_size=6)


def _check_loaded(X: np.ndarray, y: np.ndarray) -> None:
    assert X.dtype == np.float64 and y.dtype == np.float64
    assert X.ndim == 2 and X.shape[1] == DIM and y.shape == (X.shape[0],) and X.shape[0] >= 1
    assert np.isfinite(X).all() and np.isfinite(y).all()


def _load(path: Path) -> None:
    """read_table then load_user_data: either a DataError or finite data of the right shape."""
    try:
        X, y = read_table(path, DIM)
    except DataError as error:
        assert str(error)
        return
    _check_loaded(X, y)
    for dtype in ("float64", "float32"):
        config = parse_run_config({**BASE, "dim": DIM, "dataset": "node", "dtype": dtype})
        try:
            data = load_user_data(config, {"data-path": str(path)})
        except DataError:
            continue
        assert torch.isfinite(data.X).all() and torch.isfinite(data.y).all()


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@FAST
@given(payload=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".npz", ".parquet", ".pq", ".txt", ".NPZ"]))
def test_random_bytes_are_refused(folder, payload, suffix):
    path = folder / f"random{suffix}"
    path.write_bytes(payload)
    _load(path)


@settings(FAST, max_examples=200)
@given(header=_HEADER, rows=st.lists(st.lists(_CELL, min_size=0, max_size=6), max_size=5))
def test_any_csv_is_either_loaded_finite_or_refused(folder, header, rows):
    path = folder / "table.csv"
    lines = [",".join(header)] + [",".join(str(c) for c in row) for row in rows]
    path.write_text("\n".join(lines), encoding="utf-8")
    _load(path)


_ARRAYS = hnp.arrays(dtype=st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.boolean_dtypes(),
                                     hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(max_len=3),
                                     st.just(np.dtype([("a", "f8")]))),
                     shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))


@settings(FAST, max_examples=250)
@given(X=_ARRAYS, y=_ARRAYS, drop=st.sampled_from([None, "X", "y"]), extra=st.booleans())
def test_any_npz_is_either_loaded_finite_or_refused(folder, X, y, drop, extra):
    arrays = {"X": X, "y": y}
    if drop:
        del arrays[drop]
    if extra:
        arrays["w"] = np.array([object()], dtype=object)  # a pickled array the loader never needs to open
    path = folder / "table.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    _load(path)


@settings(FAST, max_examples=120)
@given(X=hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.just(DIM)),
                    elements=st.floats(allow_nan=True, allow_infinity=True)),
       duplicate=st.booleans())
def test_any_parquet_is_either_loaded_finite_or_refused(folder, X, duplicate):
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"x{j}" for j in range(DIM)] + ["y"] + (["x0"] if duplicate else [])
    columns = [pa.array(X[:, j]) for j in range(DIM)] + [pa.array(X[:, 0])] + ([pa.array(X[:, 1])] if duplicate else [])
    path = folder / "table.parquet"
    pq.write_table(pa.Table.from_arrays(columns, names=names), path)
    _load(path)
    if duplicate:
        with pytest.raises(DataError):
            read_table(path, DIM)


@pytest.mark.parametrize("content,reason", [
    ("x0,x1,x2,y\n1,2,3,4\n", None),
    ("x0,x0,x1,x2,y\n1,2,3,4,5\n", "more than once"),
    ("x0,x1,x2,y\na,2,3,4\n", "dtype"),
    ("x0,x1,x2,y\n1,2,3\n1,2,3,4,5\n", "cannot be read"),
    ("", "cannot be read"),
    ("x0,x1,x2,y\n1e200,1e200,1e200,1e200\n", "overflow"),
    ("x0,x1,x2,y\n1e30,1,1,1\n", "overflow"),  # finite in float64, X^T X overflows float32
])
def test_csv_examples(folder, content, reason):
    path = folder / "example.csv"
    path.write_text(content)
    config = parse_run_config({**BASE, "dim": DIM, "dataset": "node", "dtype": "float32"})
    if reason is None:
        assert load_user_data(config, {"data-path": str(path)}).X.shape == (1, 1, DIM)
    else:
        with pytest.raises(DataError, match=reason):
            load_user_data(config, {"data-path": str(path)})


def test_npz_with_complex_or_pickled_data_is_refused(folder):
    path = folder / "complex.npz"
    np.savez(path, X=np.ones((2, DIM)) * 1j, y=np.ones(2))
    with pytest.raises(DataError, match="complex"):
        read_table(path, DIM)
    np.savez(path, X=np.array([None] * DIM, dtype=object).reshape(1, DIM), y=np.ones(1))
    with pytest.raises(DataError, match="cannot be read"):
        read_table(path, DIM)


class _SwappedGrid(FakeGrid):
    """A faulty or hostile SuperLink: node HOSTILE's reply is presented as the answer to another node's message."""

    def pull_messages(self, message_ids):
        pulled = super().pull_messages(message_ids)
        ids = [r.metadata.reply_to_message_id for r in pulled]
        for reply in pulled:
            if int(reply.metadata.src_node_id) == HOSTILE:
                other = next((i for i in ids if i != reply.metadata.reply_to_message_id), None)
                if other is not None:
                    reply.metadata.__dict__["_reply_to_message_id"] = other
        return pulled


def test_a_reply_that_answers_another_nodes_message_is_refused():
    overrides = {**BASE, "num-server-rounds": 2}
    result = Billboard(parse_run_config(overrides)).run(_SwappedGrid(make_client_app(overrides), NODES))
    reasons = {(r.node_id, r.reason) for r in result.refusals}
    assert (HOSTILE, "the reply does not answer the message sent to this node in this round.") in reasons
    assert result.rounds_completed == 2
