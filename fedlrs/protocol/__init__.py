"""The protocol between a device and the server, owned by neither (DESIGN.md section 4).

* :mod:`.parts`: the ONE contribution spec (name, shape, clipping bound, symmetric) that the
  client clips to, the server validates replies against, the release noises for, and SecAgg+
  sends the upper triangle of;
* :mod:`.messages`: message types and record keys;
* :mod:`.wire`: the integer wire format of secure aggregation (quantization constants, encode,
  decode, the server's per-release request) and the strong SecAgg+ masks;
* :mod:`.validation`: reply validation (a reply is exactly a valid clipped contribution, or refused).

Imports neither :mod:`fedlrs.client` nor :mod:`fedlrs.server`, nor Flower: both sides import it.
"""

from fedlrs.protocol.parts import PHASES, Part, Phase, contribution_parts, expected_parts, linear_parts
from fedlrs.protocol.validation import RefusedReply, validate_reply

__all__ = ["PHASES", "Part", "Phase", "RefusedReply", "contribution_parts", "expected_parts", "linear_parts",
           "validate_reply"]
