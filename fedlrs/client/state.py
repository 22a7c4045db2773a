"""The device's private state ``w_i, b_i``: kept in ``context.state`` and, on a real device, on disk.

``context.state`` keeps records across the rounds of one run. A device that
restarts (or joins a new run) loses it, so when the node config names a
``state-dir`` the state is also written there, atomically (temporary file,
``fsync``, ``os.replace``), and read back when ``context.state`` is empty.
Nothing here is ever sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Context

from fedlrs.core import LocalFit
from fedlrs.storage import atomic_write

STATE_RECORD = "fedlrs.local"
STATE_FILE = "fedlrs-local-state.npz"


@dataclass(frozen=True)
class LocalState:
    """``w`` (r,), ``b`` (d,) of this user and the round of the U they were fitted for."""

    w: np.ndarray
    b: np.ndarray
    round: int

    @classmethod
    def from_fit(cls, fit: LocalFit, round_number: int) -> "LocalState":
        return cls(fit.w[0].detach().cpu().numpy().copy(), fit.b[0].detach().cpu().numpy().copy(), int(round_number))

    def to_record(self) -> ArrayRecord:
        return ArrayRecord({"w": Array(self.w), "b": Array(self.b), "round": Array(np.array([self.round], dtype=np.int64))})

    @classmethod
    def from_record(cls, record: ArrayRecord) -> "LocalState":
        return cls(record["w"].numpy(), record["b"].numpy(), int(record["round"].numpy()[0]))


def state_path(node_config: Mapping[str, Any], file_name: str = STATE_FILE) -> Path | None:
    """``<state-dir>/<file_name>`` when the node config names a ``state-dir`` (default file: the linear task's)."""
    directory = node_config.get("state-dir")
    return Path(str(directory)) / file_name if directory else None


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as one ``.npz`` to ``path`` atomically: the file holds the old arrays or the new ones, never half."""
    atomic_write(path, lambda handle: np.savez(handle, **arrays))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by :func:`save_arrays` (no pickled objects)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name].copy() for name in archive.files}


def save_state(path: Path, state: LocalState) -> None:
    """Write ``state`` to ``path`` atomically (:func:`save_arrays`)."""
    save_arrays(path, {"w": state.w, "b": state.b, "round": np.array(state.round, dtype=np.int64)})


def read_state(path: Path) -> LocalState:
    arrays = read_arrays(path)
    return LocalState(arrays["w"], arrays["b"], int(arrays["round"]))


def load_state(context: Context) -> LocalState | None:
    """This user's last ``w_i, b_i``: from ``context.state``, else from the state directory, else None."""
    if STATE_RECORD in context.state.array_records:
        return LocalState.from_record(context.state.array_records[STATE_RECORD])
    path = state_path(context.node_config)
    if path is not None and path.is_file():
        state = read_state(path)
        context.state.array_records[STATE_RECORD] = state.to_record()
        return state
    return None


def store_state(context: Context, state: LocalState) -> None:
    """Keep ``state`` in ``context.state`` and, when the node has a ``state-dir``, on disk."""
    context.state.array_records[STATE_RECORD] = state.to_record()
    path = state_path(context.node_config)
    if path is not None:
        save_state(path, state)
