"""The device's side of secure aggregation: the SecAgg+ mod and the masked vector's inner call.

With ``secure-aggregation`` on, a contribution never leaves the device in the clear:
Flower's SecAgg+ client mod (:func:`flwr.client.mod.secaggplus_mod`) masks it, and
the server can only unmask the sum of the cohort (:mod:`fedlrs.server.secure_aggregation`).
What the mod masks is the contribution in the integer wire format of :mod:`fedlrs.protocol.wire`
(scaled by each part's clipping bound, quantized, a discrete Gaussian share added in mode
"distributed-noise", reduced modulo ``2**31``); the masks are SHAKE-256 of the whole seed
(:func:`fedlrs.protocol.wire.shake_masks`, installed in Flower's mod by :func:`install_strong_masks`),
and the SecAgg+ settings and unmask requests are checked before the mod runs.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedlrs.client.contribution import moments_contribution, round_contribution
from fedlrs.client.data import load_user_data
from fedlrs.client.state import LocalState, store_state
from fedlrs.core import sufficient_statistics
from fedlrs.federation_config import FederationConfig
from fedlrs.protocol.wire import (CLIPPING_RANGE, MAX_WEIGHT, MODULUS_RANGE, NUM_EXAMPLES, RING, SecureAggregationError,
                                  WireSettings, encode, use_strong_masks, wire_parts)


def install_strong_masks() -> None:
    """Make Flower's SecAgg+ mod draw its masks from :func:`~fedlrs.protocol.wire.shake_masks` (idempotent, process-wide)."""
    use_strong_masks(importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod"))


def share_rng(config: FederationConfig, node_id: int, settings: WireSettings) -> random.Random:
    """The OS's entropy; with ``noise-seed >= 0`` (tests only) a generator seeded by it, the node and the release."""
    if config.noise_seed < 0:
        return random.SystemRandom()
    return random.Random(f"{config.noise_seed}/{node_id}/{settings.phase}/{settings.round}")


def secure_train(message: Message, context: Context, config: FederationConfig) -> Message:
    """The masked-vector stage's inner call: the contribution in the wire format, as the FitRes the mod masks.

    Called by the SecAgg+ mod only (its message is the server's FitIns: ``U`` as parameters, the
    :class:`WireSettings` as config). Keeps ``w_i, b_i`` on the device as :func:`fedlrs.client.app.train` does;
    for a network task the parameters are the shared state and the step is :func:`fedlrs.client.network.train_nn`'s.
    """
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    settings = WireSettings.from_config(dict(fitins.config), config)
    if config.task != "linear":
        from fedlrs.client.network import secure_contribution_nn  # at call time: tests replace it

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
