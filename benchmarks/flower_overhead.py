"""Flower's overhead per client-round against the in-process engine, on the same work.

    python benchmarks/flower_overhead.py [--users 1000] [--rounds 10] [--repeats 3] [--max-in-flight 0,100]

For each repeat: the in-process engine (:func:`fedlrs.simulations.engine.run_engine`)
and the Flower simulation (:func:`flwr.simulation.run_simulation`, Ray backend, one
virtual SuperNode per user, the billboard ServerApp and the fedlrs ClientApp) run the
same AMHT-LRS rounds (q = 1: every user every round) in this process. Printed: the
median over the repeats of the engine time, the Flower time of the billboard's run
(first message to last reply: what the rounds cost) and of the whole ``run_simulation``
call (Ray's start and stop included), the overhead per client-round
``(flower - engine) / (users * rounds)`` and the ratio to the engine, for each
``max-in-flight`` window of the billboard (0: a round's messages all at once). One more
row splits the overhead: the same ClientApp called in this process with the same
messages and no transport (the device work of a client-round at n = 1, which the
engine does batched over all users).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def work(users: int, rounds: int) -> dict:
    """The run config (kebab-case) of the measured work: every user in every round, no privacy."""
    return {"num-server-rounds": rounds, "dim": 20, "rank": 2, "sparsity": 2, "data-examples": 10,
            "starts": 2, "sample-rate": 1.0, "init": "moments", "min-nodes": users, "wait-for-nodes": 120.0,
            "round-timeout": 600.0, "personalize-at-end": False}


def time_engine(overrides: dict, users: int) -> tuple[float, float]:
    """(seconds of the whole run, seconds of the rounds after the init)."""
    from fedlrs.federation_config import parse_run_config
    from fedlrs.simulations.engine import run_engine
    from fedlrs.data.synthetic import make_lrs_data

    config = parse_run_config(overrides)
    data = make_lrs_data(users=users, examples=config.data_examples, dim=config.dim, rank=config.rank,
                         sparsity=config.sparsity, noise=config.data_noise, seed=config.data_seed)
    started = time.perf_counter()
    result = run_engine(data.train, config.engine_config())
    total = time.perf_counter() - started
    return total, result.history[-1]["seconds"] - result.history[0]["seconds"]


def time_client_app(overrides: dict, users: int, calls: int = 300) -> float:
    """Seconds per ``train`` call of the ClientApp in this process, one torch thread (a round's message, no transport)."""
    import torch
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from fedlrs.client.app import make_client_app
    from fedlrs.core import random_orthonormal

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    client_app = make_client_app(overrides)
    U = random_orthonormal(overrides["dim"], overrides["rank"], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    contexts = [Context(run_id=1, node_id=i + 1, node_config={"partition-id": i, "num-partitions": users},
                        state=RecordDict(), run_config={}) for i in range(min(calls, users))]

    def call(i: int) -> None:
        content = RecordDict({"billboard": ArrayRecord({"U": Array(U.numpy())}), "round-config": ConfigRecord({"round": 1})})
        client_app(Message(content, dst_node_id=i + 1, message_type="train", group_id="1"), contexts[i % len(contexts)])

    call(0)  # the synthetic federation is drawn once per process
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray actor with one CPU (Ray sets OMP_NUM_THREADS=1)
    try:
        started = time.perf_counter()
        for i in range(calls):
            call(i)
        return (time.perf_counter() - started) / calls
    finally:
        torch.set_num_threads(threads)


def time_flower(overrides: dict, users: int, cpus_per_client: float) -> dict:
    """Seconds of the whole run_simulation call, of the billboard's run, of its round exchanges; rounds completed."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedlrs.client.app import make_client_app
    from fedlrs.federation_config import parse_run_config
    from fedlrs.server.billboard import Billboard

    measured: dict = {"exchanges": []}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        billboard = Billboard(parse_run_config(context.run_config, overrides))
        exchange = billboard._exchange

        def timed(*args):
            started = time.perf_counter()
            replies = exchange(*args)
            measured["exchanges"].append(time.perf_counter() - started)
            return replies

        billboard._exchange = timed
        started = time.perf_counter()
        result = billboard.run(grid)
        measured["run"] = time.perf_counter() - started
        measured["rounds"] = result.rounds_completed

    started = time.perf_counter()
    run_simulation(server_app=server_app, client_app=make_client_app(overrides), num_supernodes=users,
                   backend_config={"client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count(), "include_dashboard": False}})
    total = time.perf_counter() - started
    if "run" not in measured:
        raise RuntimeError("the ServerApp did not finish; see the log above.")
    # exchange 0 is the moments init (it also starts the ClientApp actors); then one per round
    return {"total": total, "run": measured["run"], "rounds": sum(measured["exchanges"][1:]),
            "completed": measured["rounds"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-in-flight", default="0", help="comma-separated windows of the billboard (0: all at once)")
    parser.add_argument("--cpus-per-client", type=float, default=1.0,
                        help="Ray resources of one ClientApp actor (1: one actor per core)")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    windows = [int(w) for w in args.max_in_flight.split(",")]
    overrides = work(args.users, args.rounds)
    rows: dict[str, list[float]] = {"engine": [], "engine rounds": [], "client app": []}
    for window in windows:
        rows.update({f"total {window}": [], f"run {window}": [], f"rounds {window}": []})
    load_before = os.getloadavg()[0]
    for repeat in range(args.repeats):
        engine, engine_rounds = time_engine(overrides, args.users)
        rows["engine"].append(engine)
        rows["engine rounds"].append(engine_rounds)
        rows["client app"].append(time_client_app(overrides, args.users) * args.users * args.rounds)
        for window in windows:
            flower = time_flower({**overrides, "max-in-flight": window}, args.users, args.cpus_per_client)
            if flower["completed"] != args.rounds:
                raise RuntimeError(f"the Flower run completed {flower['completed']} of {args.rounds} rounds.")
            for key in ("total", "run", "rounds"):
                rows[f"{key} {window}"].append(flower[key])
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in rows.items()), file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    client_rounds = args.users * args.rounds
    print(f"\n{args.users} users x {args.rounds} rounds = {client_rounds} client-rounds, q = 1, "
          f"d = {overrides['dim']}, r = {overrides['rank']}, k = {overrides['sparsity']}, "
          f"{overrides['data-examples']} examples per user; median of {args.repeats} run(s); "
          f"{os.cpu_count()} cores; Ray, {args.cpus_per_client} CPU per ClientApp actor; "
          f"1-minute load average {load_before:.2f} before the runs (other work on the machine slows every row)\n")
    print("| what | seconds | ms per client-round | overhead vs engine, ms per client-round | ratio to engine |")
    print("| --- | ---: | ---: | ---: | ---: |")
    table = [("engine: init + rounds", "engine", "engine"), ("engine: rounds only", "engine rounds", "engine rounds"),
             ("ClientApp called in-process, one user per call, no transport (rounds)", "client app", "engine rounds")]
    for window in windows:
        label = "all messages at once" if window == 0 else f"max-in-flight {window}"
        table += [(f"Flower, {label}: whole run_simulation (Ray start/stop included)", f"total {window}", "engine"),
                  (f"Flower, {label}: rounds only (warm actors)", f"rounds {window}", "engine rounds")]
    for name, key, base in table:
        m, e = med[key], med[base]
        overhead = "-" if key == base else f"{1e3 * (m - e) / client_rounds:.2f}"
        print(f"| {name} | {m:.3f} | {1e3 * m / client_rounds:.3f} | {overhead} | {m / e:.1f} |")


if __name__ == "__main__":
    main()
