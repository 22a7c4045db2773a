"""The device's side of secure aggregation: the integer wire format, strong masks, the SecAgg+ mod.

With ``secure-aggregation`` on, a contribution never leaves the device in the clear:
Flower's SecAgg+ client mod (:func:`flwr.client.mod.secaggplus_mod`) masks it, and
the server can only unmask the sum of the cohort (:mod:`fedlrs.server.secure_aggregation`).

The wire format (what the mod masks), part by part (``A``, ``c`` / ``G`` / ``M``):

1. scale by the part's clipping bound C (``clip-*``; also outside private mode: a
   finite ring needs a bound) and keep the upper triangle of a symmetric part (``A``, ``M``);
2. :func:`fedlrs.privacy.distributed.quantize_unit` to integers ``k`` with ``||k|| <= 2**bits``
   (the quantized contribution is within C: the accounted sensitivity is unchanged);
3. mode "distributed-noise": add a discrete Gaussian share ``N_Z(0, sigma2)`` to every coordinate;
4. reduce modulo ``2**31`` (the ring of Flower's quantizer) and hand the mod ``u - 2**30`` with
   ``u`` in ``[0, 2**31)``: with the protocol settings of :func:`protocol_settings` Flower's
   quantization is then the identity (``clipping_range = 2**30``, ``quantization_range = 2**31``,
   weight 1 of ``max_weight`` 1), so the server recovers the exact integer sum modulo ``2**31``,
   and :func:`decode` the signed sum (it never wraps: ``bits`` leaves room for the cohort and
   the noise, :func:`fedlrs.privacy.distributed.grid_bits`).

Masks: Flower 1.41 derives every mask from a 32-bit fold of its seed fed to NumPy's
Mersenne Twister (``secaggplus_utils.pseudo_rand_gen``, flwrlabs/flower issue 7522): a
curious server can search 2**32 seeds per mask. :func:`install_strong_masks` replaces it,
in the mod's and the workflow's modules, by SHAKE-256 of the whole seed; both sides of a
fedlrs run install it and check the tag :data:`MASK_PRG`.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedlrs.client.contribution import Phase, expected_parts, moments_contribution, round_contribution
from fedlrs.client.data import load_user_data
from fedlrs.client.state import LocalState, store_state
from fedlrs.core import sufficient_statistics
from fedlrs.federation_config import FederationConfig
from fedlrs.privacy.distributed import RING_BITS, quantize_unit, sample_discrete_gaussian

#: the ring of one coordinate (Flower quantizes to [0, 2**31))
RING = 1 << RING_BITS
#: SecAgg+ settings that make Flower's quantization the identity on the wire format
CLIPPING_RANGE = float(RING // 2)
MODULUS_RANGE = 1 << 62
MAX_WEIGHT = 1.0
NUM_EXAMPLES = 1
#: the mask generator both sides must use (checked by the client on every masked vector)
MASK_PRG = "shake256-v1"
#: the parts whose contribution (and noise) is symmetric: only the upper triangle is sent
SYMMETRIC_PARTS = frozenset({"A", "M"})
#: keys of the FitIns config the server sends with each masked-vector request
PHASE, ROUND, BITS, SHARE_VARIANCE, PRG = "fedlrs.phase", "fedlrs.round", "fedlrs.bits", "fedlrs.share-variance", "fedlrs.prg"


class SecureAggregationError(RuntimeError):
    """A message this device refuses to answer under secure aggregation; the reason says why."""


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


def install_strong_masks() -> None:
    """Make Flower's SecAgg+ mod and workflow draw their masks from :func:`shake_masks` (idempotent, process-wide)."""
    for name in ("flwr.client.mod.secure_aggregation.secaggplus_mod",
                 "flwr.server.workflow.secure_aggregation.secaggplus_workflow"):
        module = importlib.import_module(name)  # the modules (their packages export functions of the same name)
        if module.pseudo_rand_gen is not shake_masks:
            module.pseudo_rand_gen = shake_masks


# ---------------------------------------------------------------- the wire format
@dataclass(frozen=True)
class WirePart:
    """One part of a contribution on the wire: its name, shape, clipping bound and symmetry."""

    name: str
    shape: tuple[int, ...]
    bound: float
    symmetric: bool

    @property
    def size(self) -> int:
        """Integers sent: ``n (n + 1) / 2`` for a symmetric (n, n) part, else every entry."""
        n = self.shape[-1]
        return n * (n + 1) // 2 if self.symmetric else math.prod(self.shape)


def wire_parts(config: FederationConfig, phase: Phase) -> list[WirePart]:
    """The parts of ``phase`` with their clipping bounds (``clip-*``, finite even outside private mode).

    A network task (``task = nn-*``) has one part, ``contribution`` (D,), bounded by ``nn-clip``.
    """
    if config.task != "linear":
        from fedlrs.nn.flower import PART, contribution_dimension  # imported here: fedlrs.nn.flower imports the server

        return [WirePart(PART, (contribution_dimension(config),), float(config.nn_clip), False)]
    bounded = config if config.private else replace(config, private=True)
    return [WirePart(name, tuple(shape), float(bound), name in SYMMETRIC_PARTS)
            for name, (shape, bound) in expected_parts(bounded, phase).items()]


def _flat(value: np.ndarray, part: WirePart) -> np.ndarray:
    if part.symmetric:
        return value[np.triu_indices(part.shape[-1])]
    return value.reshape(-1)


def quantized_parts(parts: dict[str, torch.Tensor], spec: list[WirePart], *, bits: int) -> list[np.ndarray]:
    """Step 1-2 of the wire format: each part over its bound, upper triangle if symmetric, on the grid (int64)."""
    return [quantize_unit(_flat(parts[p.name].detach().cpu().double().numpy(), p) / p.bound, bits=bits) for p in spec]


def encode(parts: dict[str, torch.Tensor], spec: list[WirePart], *, bits: int, share_variance: int = 0,
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


def decode(signed: list[np.ndarray], spec: list[WirePart], *, bits: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
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


# ---------------------------------------------------------------- the ClientApp's side
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
    def from_config(cls, config: dict, federation: FederationConfig) -> WireSettings:
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


def share_rng(config: FederationConfig, node_id: int, settings: WireSettings) -> random.Random:
    """The OS's entropy; with ``noise-seed >= 0`` (tests only) a generator seeded by it, the node and the release."""
    if config.noise_seed < 0:
        return random.SystemRandom()
    return random.Random(f"{config.noise_seed}/{node_id}/{settings.phase}/{settings.round}")


def secure_train(message: Message, context: Context, config: FederationConfig) -> Message:
    """The masked-vector stage's inner call: the contribution in the wire format, as the FitRes the mod masks.

    Called by the SecAgg+ mod only (its message is the server's FitIns: ``U`` as parameters, the
    :class:`WireSettings` as config). Keeps ``w_i, b_i`` on the device as :func:`fedlrs.client.app.train` does;
    for a network task the parameters are the shared state and the step is :func:`fedlrs.nn.flower.train_nn`'s.
    """
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    settings = WireSettings.from_config(dict(fitins.config), config)
    if config.task != "linear":
        from fedlrs.nn.flower import secure_contribution_nn

        if settings.phase != "round":
            raise SecureAggregationError(f"phase == {settings.phase!r}: a network task has rounds only.")
        try:
            parts = secure_contribution_nn(parameters_to_ndarrays(fitins.parameters), settings.round, context, config)
        except ValueError as error:
            raise SecureAggregationError(str(error)) from error
        return _masked_reply(message, context, config, settings, parts)
    data = load_user_data(config, context.node_config)
    if settings.phase == "moments":
        parts = moments_contribution(data, config)
    else:
        arrays = parameters_to_ndarrays(fitins.parameters)
        if len(arrays) != 1 or arrays[0].shape != (config.dim, config.rank):
            raise SecureAggregationError(f"U must be one ({config.dim}, {config.rank}) array.")
        U = torch.from_numpy(np.array(arrays[0])).to(config.torch_dtype)
        parts, fit = round_contribution(U, sufficient_statistics(data), config)
        store_state(context, LocalState.from_fit(fit, settings.round))
    return _masked_reply(message, context, config, settings, parts)


def _masked_reply(message: Message, context: Context, config: FederationConfig, settings: WireSettings,
                  parts: dict[str, torch.Tensor]) -> Message:
    """The contribution in the wire format as the FitRes the SecAgg+ mod masks (nothing else in it)."""
    arrays = encode(parts, wire_parts(config, settings.phase), bits=settings.bits,
                    share_variance=settings.share_variance, rng=share_rng(config, context.node_id, settings))
    fitres = FitRes(status=Status(Code.OK, ""), parameters=ndarrays_to_parameters(arrays), num_examples=NUM_EXAMPLES,
                    metrics={})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=message)


def _check_request(configs: ConfigRecord) -> None:
    """Refuse SecAgg+ settings that would distort the wire format, and an unmask request that asks for both secrets of a node."""
    stage = configs.get(Key.STAGE)
    if stage == Stage.SETUP:
        expected = {Key.CLIPPING_RANGE: CLIPPING_RANGE, Key.TARGET_RANGE: RING, Key.MOD_RANGE: MODULUS_RANGE,
                    Key.MAX_WEIGHT: MAX_WEIGHT}
        wrong = {k: configs.get(k) for k, v in expected.items() if configs.get(k) != v}
        if wrong:
            raise SecureAggregationError(f"SecAgg+ settings {wrong}, this device's wire format needs {expected}.")
    elif stage == Stage.UNMASK:
        both = set(configs.get(Key.ACTIVE_NODE_ID_LIST, [])) & set(configs.get(Key.DEAD_NODE_ID_LIST, []))
        if both:
            raise SecureAggregationError(f"nodes {sorted(both)} are said to be both active and dropped: the shares of "
                                         f"both their secrets would unmask them; refused.")


def secure_aggregation_mod(config_of: Callable[[Context], FederationConfig]):
    """The ClientApp mod: Flower's ``secaggplus_mod`` when ``secure-aggregation`` is on, nothing otherwise.

    On, every ``train`` message must be a SecAgg+ stage (a plain one, or ``train.moments``, is refused:
    a contribution never leaves the device unmasked), the masks are :func:`shake_masks`, and the
    SecAgg+ settings and unmask requests are checked (:func:`_check_request`).
    """
    from flwr.client.mod import secaggplus_mod

    def mod(message: Message, context: Context, call_next):
        config = config_of(context)
        if config.secure_aggregation == "off":
            return call_next(message, context)
        kind = message.metadata.message_type
        if kind != MessageType.TRAIN:
            if kind.split(".")[0] == MessageType.TRAIN:
                raise SecureAggregationError(f"a {kind!r} message under secure aggregation: contributions are sent "
                                             f"through SecAgg+ only; refused.")
            return call_next(message, context)
        if RECORD_KEY_CONFIGS not in message.content.config_records:
            raise SecureAggregationError("a train message without SecAgg+ under secure aggregation: the contribution "
                                         "is never sent unmasked; refused.")
        _check_request(message.content.config_records[RECORD_KEY_CONFIGS])
        install_strong_masks()
        return secaggplus_mod(message, context, call_next)

    return mod
