"""The integer wire format of secure aggregation, and the masks (both sides of SecAgg+ use them).

With ``secure-aggregation`` on, a contribution leaves the device only through Flower's SecAgg+
(:mod:`fedlrs.client.secure_aggregation` masks, :mod:`fedlrs.server.secure_aggregation` unmasks
the cohort's sum). What the mod masks, part by part (:func:`fedlrs.protocol.parts.contribution_parts`):

1. scale by the part's clipping bound C (``clip-*``; also outside private mode: a
   finite ring needs a bound) and keep the upper triangle of a symmetric part (``A``, ``M``);
2. :func:`fedlrs.privacy.distributed.quantize_unit` to integers ``k`` with ``||k|| <= 2**bits``
   (the quantized contribution is within C: the accounted sensitivity is unchanged);
3. mode "distributed-noise": add a discrete Gaussian share ``N_Z(0, sigma2)`` to every coordinate;
4. reduce modulo ``2**31`` (the ring of Flower's quantizer) and hand the mod ``u - 2**30`` with
   ``u`` in ``[0, 2**31)``: with the SecAgg+ settings below (``clipping_range = 2**30``,
   ``quantization_range = 2**31``, ``modulus_range = 2**62``, weight 1 of ``max_weight`` 1)
   Flower's quantization is the identity, so the server recovers the exact integer sum modulo
   ``2**31``, and :func:`decode` the signed sum (it never wraps: ``bits`` leaves room for the
   cohort and the noise, :func:`fedlrs.privacy.distributed.grid_bits`).

Masks: Flower 1.41 derives every mask from a 32-bit fold of its seed fed to NumPy's
Mersenne Twister (``secaggplus_utils.pseudo_rand_gen``, flwrlabs/flower issue 7522): a
curious server can search 2**32 seeds per mask. :func:`use_strong_masks` replaces it, in
the module of Flower's mod (device) or workflow (server), by :func:`shake_masks` (SHAKE-256
of the whole seed); the server's request carries the tag :data:`MASK_PRG`, which the device checks.

No Flower import here.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

from fedlrs.privacy.distributed import RING_BITS, quantize_unit, sample_discrete_gaussian
from fedlrs.protocol.parts import Part, Phase, contribution_parts

#: the ring of one coordinate (Flower quantizes to [0, 2**31))
RING = 1 << RING_BITS
#: SecAgg+ settings that make Flower's quantization the identity on the wire format
CLIPPING_RANGE = float(RING // 2)
MODULUS_RANGE = 1 << 62
MAX_WEIGHT = 1.0
NUM_EXAMPLES = 1
#: the mask generator both sides must use (checked by the client on every masked vector)
MASK_PRG = "shake256-v1"
#: keys of the FitIns config the server sends with each masked-vector request
PHASE, ROUND, BITS, SHARE_VARIANCE, PRG = "fedlrs.phase", "fedlrs.round", "fedlrs.bits", "fedlrs.share-variance", "fedlrs.prg"


class SecureAggregationError(RuntimeError):
    """A message a device refuses to answer under secure aggregation; the reason says why."""


# ---------------------------------------------------------------- masks
def shake_masks(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Masks uniform on ``[0, num_range)`` (a power of two <= 2**63) from SHAKE-256 of the whole ``seed``.

    A drop-in for Flower's ``pseudo_rand_gen`` (same arguments, int64 arrays of the given shapes),
    keyed by every bit of the seed (32 bytes of ECDH shared key or of ``os.urandom``).
    """
    if num_range < 2 or num_range & (num_range - 1) or num_range > 1 << 63:
        raise ValueError(f"num_range == {num_range}, must be a power of two in [2, 2**63].")
    sizes = [math.prod(shape) for shape in dimensions_list]
    stream = hashlib.shake_256(b"fedlrs secagg+ mask\x00" + bytes(seed)).digest(8 * sum(sizes))
    values = (np.frombuffer(stream, dtype="<u8") & np.uint64(num_range - 1)).astype(np.int64)
    masks, start = [], 0
    for shape, size in zip(dimensions_list, sizes):
        masks.append(values[start:start + size].reshape(shape))
        start += size
    return masks


def use_strong_masks(module: ModuleType) -> None:
    """Make a Flower SecAgg+ module (the mod's or the workflow's) draw its masks from :func:`shake_masks` (idempotent)."""
    if module.pseudo_rand_gen is not shake_masks:
        module.pseudo_rand_gen = shake_masks


# ---------------------------------------------------------------- the wire format
def wire_parts(config: Any, phase: Phase) -> list[Part]:
    """The parts of ``phase`` with their clipping bounds (finite even outside private mode): the spec of
    :func:`fedlrs.protocol.parts.contribution_parts`."""
    return contribution_parts(config, phase)


def _flat(value: np.ndarray, part: Part) -> np.ndarray:
    if part.symmetric:
        return value[np.triu_indices(part.shape[-1])]
    return value.reshape(-1)


def quantized_parts(parts: dict[str, torch.Tensor], spec: list[Part], *, bits: int) -> list[np.ndarray]:
    """Step 1-2 of the wire format: each part over its bound, upper triangle if symmetric, on the grid (int64)."""
    return [quantize_unit(_flat(parts[p.name].detach().cpu().double().numpy(), p) / p.bound, bits=bits) for p in spec]


def encode(parts: dict[str, torch.Tensor], spec: list[Part], *, bits: int, share_variance: int = 0,
           rng: random.Random | None = None) -> list[np.ndarray]:
    """The float64 arrays handed to the SecAgg+ mod: ``((k + share) mod 2**31) - 2**30`` per part."""
    out = []
    for k in quantized_parts(parts, spec, bits=bits):
        if share_variance:
            k = k + sample_discrete_gaussian(k.size, sigma2=share_variance, rng=rng)
        out.append((k & (RING - 1)).astype(np.float64) - RING // 2)
    return out


def signed_sums(ring_sums: list[np.ndarray]) -> list[np.ndarray]:
    """The unmasked sums modulo ``2**31`` as signed integers in ``[-2**30, 2**30)`` (int64)."""
    out = []
    for s in ring_sums:
        r = np.asarray(s, dtype=np.int64) & (RING - 1)
        out.append(np.where(r >= RING // 2, r - RING, r))
    return out


def decode(signed: list[np.ndarray], spec: list[Part], *, bits: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The summed parts from their signed integer sums: ``k * C / 2**bits``, symmetric parts mirrored."""
    sums = {}
    for part, k in zip(spec, signed):
        values = k.astype(np.float64) * (part.bound / 2 ** bits)
        if part.symmetric:
            n = part.shape[-1]
            full = np.zeros((n, n))
            full[np.triu_indices(n)] = values
            values = full + np.triu(full, 1).T
        sums[part.name] = torch.from_numpy(values.reshape(part.shape)).to(dtype)
    return sums


# ---------------------------------------------------------------- the request
@dataclass(frozen=True)
class WireSettings:
    """What the server asks for one masked vector: phase, round, grid bits, share variance, mask tag."""

    phase: Phase
    round: int
    bits: int
    share_variance: int
    prg: str = MASK_PRG

    def to_config(self) -> dict:
        return {PHASE: self.phase, ROUND: self.round, BITS: self.bits, SHARE_VARIANCE: self.share_variance, PRG: self.prg}

    @classmethod
    def from_config(cls, config: dict, federation: Any) -> WireSettings:
        """Parse and check the server's request against this device's run config; refuse what it does not allow."""
        try:
            settings = cls(str(config[PHASE]), int(config[ROUND]), int(config[BITS]), int(config[SHARE_VARIANCE]),
                           str(config[PRG]))
        except (KeyError, TypeError, ValueError) as error:
            raise SecureAggregationError(f"the request lacks a valid {error}; refused.") from error
        if settings.phase not in ("round", "moments"):
            raise SecureAggregationError(f"phase == {settings.phase!r}, must be 'round' or 'moments'.")
        if settings.prg != MASK_PRG:
            raise SecureAggregationError(f"mask generator {settings.prg!r}, this device masks with {MASK_PRG!r} only.")
        if not 8 <= settings.bits <= RING_BITS - 2:
            raise SecureAggregationError(f"bits == {settings.bits}, must be in [8, {RING_BITS - 2}].")
        distributed = federation.secure_aggregation == "distributed-noise"
        if distributed and settings.share_variance < 1:
            raise SecureAggregationError("secure-aggregation == 'distributed-noise': the request asks for no noise "
                                         "share; this device never sends its contribution without one.")
        if not distributed and settings.share_variance != 0:
            raise SecureAggregationError(f"share variance {settings.share_variance} requested, but "
                                         f"secure-aggregation == {federation.secure_aggregation!r}.")
        return settings
