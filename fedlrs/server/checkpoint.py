"""The billboard's checkpoint: the shared state (U, or a network's), the round, the sampler's random state, z.

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

from fedlrs.storage import atomic_write

CHECKPOINT_FILE = "billboard.pt"
LEDGER_FILE = "ledger.jsonl"
FORMAT = "fedlrs-billboard-checkpoint"
VERSION = 2  # 1: the shared state was U alone (still read)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used to resume this run."""


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed billboard needs: the shared state after ``round`` updates and the state to go on exactly.

    shared: ``{"U": U}`` for AMHT-LRS, the network method's shared state for a network run.
    noise_multiplier: the calibrated z (-1 when the run is not private).
    clip_bound: the next round's clip bound of adaptive clipping (None: none, or an older checkpoint).
    """

    round: int
    shared: dict[str, torch.Tensor]
    generator_state: torch.Tensor
    noise_multiplier: float
    ledger_events: int
    fingerprint: dict[str, Any]
    clip_bound: float | None = None


def save_checkpoint(directory: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``directory/billboard.pt`` atomically: a crash leaves the previous checkpoint or this one."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    shared = {name: value.detach().cpu() for name, value in checkpoint.shared.items()}
    payload = {"format": FORMAT, "version": VERSION, "round": checkpoint.round, "shared": shared,
               "generator_state": checkpoint.generator_state, "noise_multiplier": checkpoint.noise_multiplier,
               "ledger_events": checkpoint.ledger_events, "fingerprint": checkpoint.fingerprint,
               "clip_bound": checkpoint.clip_bound}
    atomic_write(path, lambda handle: torch.save(payload, handle))
    return path


def load_checkpoint(directory: str | Path, fingerprint: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint in ``directory`` (None when there is none), refused if it is from another configuration."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    payload = torch.load(path, weights_only=True)
    if payload.get("format") != FORMAT or payload.get("version") not in (1, VERSION):
        raise CheckpointError(f"{path} is not a fedlrs billboard checkpoint (format {payload.get('format')!r}, "
                              f"version {payload.get('version')!r}).")
    if payload["fingerprint"] != fingerprint:
        changed = sorted(k for k in set(fingerprint) | set(payload["fingerprint"])
                         if fingerprint.get(k) != payload["fingerprint"].get(k))
        raise CheckpointError(f"{path} was written by a run with other settings ({changed}); "
                              f"use a new checkpoint-dir or the same settings.")
    shared = {"U": payload["U"]} if payload["version"] == 1 else dict(payload["shared"])
    return Checkpoint(int(payload["round"]), shared, payload["generator_state"], float(payload["noise_multiplier"]),
                      int(payload["ledger_events"]), payload["fingerprint"], payload.get("clip_bound"))
