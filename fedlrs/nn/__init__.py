"""LRS for neural networks: ``theta_i = theta_0 + U w_i + b_i`` over chosen parameters of a torch module.

* :mod:`.method`: the :class:`FederatedMethod` contract and :class:`UserExamples` (a leading user dim).
* :mod:`.network`: one module evaluated with per-user parameters (``vmap`` over ``functional_call``).
* :mod:`.lrs`: :class:`LRSNetwork`, the LRS-NN method.
* :mod:`.federated`: the privacy rules and :class:`NetworkConfig`; the in-process loop is :func:`fedlrs.tasks.network.run_federated`.
* :mod:`.flower`: the same loop on Flower (run config ``task = "nn-..."``).
* :mod:`.tasks`, :mod:`.baselines`: the data sets and FedAvg / FedAvg+FT / FedRep.

The Flower adapters are not imported here, so ``import fedlrs.nn`` needs no Flower.
"""

from fedlrs.nn.federated import FederatedResult, NetworkConfig
from fedlrs.nn.lrs import LRSNetwork
from fedlrs.nn.method import FederatedMethod, UserExamples

__all__ = ["FederatedMethod", "FederatedResult", "LRSNetwork", "NetworkConfig", "UserExamples"]
