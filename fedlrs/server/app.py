"""The Flower ServerApp of fedlrs: parse the run config once, run the billboard (``task``: linear or a network task) on the Grid."""

from __future__ import annotations

from typing import Any, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlrs.federation_config import parse_run_config
from fedlrs.server.billboard import Billboard
from fedlrs.server.network import NetworkBillboard


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """A ServerApp; ``overrides`` (kebab-case) win over the run config (``run_simulation`` passes none)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        config = parse_run_config(context.run_config, overrides)
        if config.task == "linear":
            Billboard(config).run(grid)
        else:  # a network task: the same billboard rules for a network method's shared state
            NetworkBillboard(config).run(grid)

    return server_app


app = make_server_app()
