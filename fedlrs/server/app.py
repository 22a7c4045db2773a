"""The Flower ServerApp of fedlrs: parse the run config once, run the task it names on the Grid.

``task``: "linear" (the AMHT-LRS billboard), "nn-*" (a network task on the same billboard rules)
or "recsys" (matrix completion, :mod:`fedlrs.server.recsys`); :func:`run_task` is the one dispatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlrs.federation_config import FederationConfig, parse_run_config
from fedlrs.privacy import Ledger
from fedlrs.recsys.model import RecsysTask
from fedlrs.recsys.flower_task import recsys_task
from fedlrs.server.billboard import Billboard
from fedlrs.server.network import NetworkBillboard
from fedlrs.server.recsys import run_recsys
from fedlrs.task_registry import task_class
from fedlrs.tasks.linear import LinearTask
from fedlrs.tasks.network import NetworkTask


def _recommender(grid: Grid, config: FederationConfig):
    """Matrix completion: every device one user's ratings; ``report-dir`` gets P and the privacy report."""
    task = recsys_task(config)
    ledger = Ledger(Path(config.report_dir) / "ledger.jsonl") if config.report_dir and config.private else None  # every event on disk first
    result = run_recsys(grid, task, ledger=ledger, min_nodes=config.min_nodes, wait_for_nodes=config.wait_for_nodes, round_timeout=config.round_timeout)
    if config.report_dir:
        result.write(config.report_dir, task)
    return result


#: the server side of each task class of the registry (:func:`fedlrs.task_registry.task_class`)
SERVERS = {LinearTask: lambda grid, config: Billboard(config).run(grid), NetworkTask: lambda grid, config: NetworkBillboard(config).run(grid),
           RecsysTask: _recommender}


def run_task(grid: Grid, config: FederationConfig):
    """Run the run config's task on ``grid`` and return its result: the server side of its task class (:data:`SERVERS`)."""
    return SERVERS[task_class(config.task)](grid, config)


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp; ``overrides`` (kebab-case) win over the run config (``run_simulation`` passes none)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_task(grid, parse_run_config(context.run_config, overrides))

    return server_app


app = make_server_app()
