"""Message types and record keys of the fedlrs protocol (the server sends, the device answers).

* ``train``: ``billboard`` (ArrayRecord ``U``) and ``round-config`` (``round``) -> ``contribution``;
* ``train.moments``: ``round-config`` -> ``contribution`` (``M``);
* ``train.clip`` (the unit-free step's clip phase): ``billboard`` and ``round-config`` -> ``contribution`` (``H``);
* ``query.personalize``: ``billboard`` and ``round-config`` -> empty;
* ``train.nn``: ``shared`` (the network's shared state) and ``round-config`` -> ``contribution``;
* ``query.nn_personalize``: ``shared`` and ``round-config`` -> empty.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN = "train"
TRAIN_MOMENTS = "train.moments"
TRAIN_CLIP = "train.clip"
PERSONALIZE = "query.personalize"
TRAIN_NN = "train.nn"
PERSONALIZE_NN = "query.nn_personalize"

#: the ArrayRecord of the published ``U``
BILLBOARD = "billboard"
#: the ConfigRecord with the round number (and, in a round of the unit-free step, its clip bound)
ROUND_CONFIG = "round-config"
#: the round's clip bound of the unit-free step, in ``round-config``
CLIP_BOUND = "clip-bound"
#: the ArrayRecord of a network's shared state
SHARED = "shared"
#: the only record of a reply: the ArrayRecord of the clipped parts
CONTRIBUTION = "contribution"


def message_type(phase: str) -> str:
    """The message that asks the nodes of an AMHT-LRS run for their contribution in ``phase``."""
    return {"moments": TRAIN_MOMENTS, "clip": TRAIN_CLIP}.get(phase, TRAIN)


def state_arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Tensors as NumPy arrays on the CPU, in the state's order (what an ArrayRecord of the state holds)."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
