"""The registry of tasks: a run's ``task`` name -> its :class:`~fedlrs.tasks.base.Task` class. Only entry points read it.

``"linear"``: AMHT-LRS (:class:`~fedlrs.tasks.linear.LinearTask`); ``"nn-*"`` (``nn-digits``,
``nn-movielens``, ``nn-synthetic``, the Flower run config's network tasks) and ``"nn"``: a network
method (:class:`~fedlrs.tasks.network.NetworkTask`); ``"fedavg-global"``: DP-FedAvg of one linear
model (:class:`~fedlrs.tasks.fedavg.GlobalLinearTask`); ``"recsys"``: matrix completion
(:class:`~fedlrs.recsys.model.RecsysTask`) and ``"private-lrs"``, its private plan of a bias release
then factor rounds (:class:`~fedlrs.recsys.private.PrivateLrsTask`).

It sits with the entry points, above every task's package (``tasks/``, ``recsys/``), so that
a task package never imports it.
"""

from __future__ import annotations

from fedlrs.recsys.model import RecsysTask
from fedlrs.recsys.private import PrivateLrsTask
from fedlrs.tasks.fedavg import GlobalLinearTask
from fedlrs.tasks.linear import LinearTask
from fedlrs.tasks.network import NetworkTask

#: task name -> class; a name starting with "nn-" is a network task
TASKS: dict[str, type] = {"linear": LinearTask, "nn": NetworkTask, "fedavg-global": GlobalLinearTask, "recsys": RecsysTask, "private-lrs": PrivateLrsTask}


def task_class(name: str) -> type:
    """The task class of ``name`` (``"nn-<data>"`` -> :class:`NetworkTask`); a clear error for any other name."""
    if not isinstance(name, str):
        raise ValueError(f"task == {name!r}, must be a task name, one of {sorted(TASKS)} or 'nn-<data>'.")
    key = "nn" if name.startswith("nn-") else name
    if key not in TASKS:
        raise ValueError(f"task == {name!r}, must be one of {sorted(TASKS)} or 'nn-<data>'.")
    return TASKS[key]
