"""Message types and record keys of the fedlrs protocol (the server sends, the device answers).

* ``train``: ``billboard`` (ArrayRecord ``U``) and ``round-config`` (``round``) -> ``contribution``;
* ``train.moments``: ``round-config`` -> ``contribution`` (``M``);
* ``query.personalize``: ``billboard`` and ``round-config`` -> empty;
* ``train.nn``: ``shared`` (the network's shared state) and ``round-config`` -> ``contribution``;
* ``query.nn_personalize``: ``shared`` and ``round-config`` -> empty.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN = "train"
TRAIN_MOMENTS = "train.moments"
PERSONALIZE = "query.personalize"
TRAIN_NN = "train.nn"
PERSONALIZE_NN = "query.nn_personalize"

#: the ArrayRecord of the published ``U``
BILLBOARD = "billboard"
#: the ConfigRecord with the round number
ROUND_CONFIG = "round-config"
#: the ArrayRecord of a network's shared state
SHARED = "shared"
#: the only record of a reply: the ArrayRecord of the clipped parts
CONTRIBUTION = "contribution"


def message_type(phase: str) -> str:
    """The message that asks the nodes of an AMHT-LRS run for their contribution in ``phase``."""
    return TRAIN_MOMENTS if phase == "moments" else TRAIN


def state_arrays(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Tensors as NumPy arrays on the CPU, in the state's order (what an ArrayRecord of the state holds)."""
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
