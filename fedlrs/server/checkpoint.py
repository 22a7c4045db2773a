"""The billboard's checkpoint: U, the round, the sampler's random state, the noise multiplier.

Written atomically (temporary file, ``fsync``, ``os.replace``, directory ``fsync``)
after every round, so a crash leaves the previous checkpoint or the new one. The
privacy ledger is its own append-only file beside it (:class:`fedlrs.privacy.ledger.Ledger`),
recorded *before* each release; the checkpoint keeps how many events it had, so a
resume can tell a release that was recorded but whose U was never checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedlrs.client.state import atomic_write

CHECKPOINT_FILE = "billboard.pt"
LEDGER_FILE = "ledger.jsonl"
FORMAT = "fedlrs-billboard-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used to resume this run."""


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed billboard needs: ``U`` after ``round`` updates and the state to go on exactly."""

    round: int
    U: torch.Tensor
    generator_state: torch.Tensor
    noise_multiplier: float
    ledger_events: int
    fingerprint: dict[str, Any]


def save_checkpoint(directory: str | Path, checkpoint: Checkpoint) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    payload = {"format": FORMAT, "version": VERSION, "round": checkpoint.round, "U": checkpoint.U.detach().cpu(),
               "generator_state": checkpoint.generator_state, "noise_multiplier": checkpoint.noise_multiplier,
               "ledger_events": checkpoint.ledger_events, "fingerprint": checkpoint.fingerprint}
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return path


def load_checkpoint(directory: str | Path, fingerprint: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint in ``directory`` (None when there is none), refused if it is from another configuration."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    payload = torch.load(path, weights_only=True)
    if payload.get("format") != FORMAT or payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a fedlrs billboard checkpoint (format {payload.get('format')!r}).")
    if payload["fingerprint"] != fingerprint:
        changed = sorted(k for k in set(fingerprint) | set(payload["fingerprint"])
                         if fingerprint.get(k) != payload["fingerprint"].get(k))
        raise CheckpointError(f"{path} was written by a run with other settings ({changed}); "
                              f"use a new checkpoint-dir or the same settings.")
    return Checkpoint(int(payload["round"]), payload["U"], payload["generator_state"], float(payload["noise_multiplier"]),
                      int(payload["ledger_events"]), payload["fingerprint"])
