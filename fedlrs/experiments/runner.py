"""The one core of every experiment runner: threads, seeds, timing, and the outputs ``table.md``, plots and ``results.json``.

Each experiment (``fedlrs experiment NAME``: the linear ones of :mod:`fedlrs.experiments.linear`,
the network ones of :mod:`fedlrs.experiments.nn`, the rating ones of :mod:`fedlrs.experiments.recsys`,
Personalized Regression's of :mod:`fedlrs.experiments.personalized`) is a *body*: a function of
the seeds that runs the fits and returns an :class:`ExperimentOutput`. :func:`run_experiment_body`
runs it under the config's thread count (restored afterwards), times it, and writes what every
experiment writes, in one way:

* ``OUT/table.md``: the body's Markdown, given the seconds taken (the notes print them);
* each plot of the body, ``OUT/<file>.png``;
* ``OUT/results.json``: ``name``, ``config``, ``seeds``, ``seconds`` and the body's own entries
  (rows, records, tuning, ...), through :func:`fedlrs.experiments.tables.json_safe`.

It echoes the Markdown and returns ``table``, ``paths`` and ``seconds`` with the body's own
return entries (rows, records, ...).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fedlrs.experiments.tables import json_safe


@dataclass
class ExperimentOutput:
    """What an experiment's body hands the core: its Markdown (a function of the seconds taken), plots, results and return value.

    ``markdown(seconds)``: the whole ``table.md``; ``echo(seconds)``: what is printed (default:
    the Markdown; None: nothing, the body printed its own table); ``plots``: file name -> ``plot(path)``; ``results``: the entries of
    ``results.json`` beside ``name``, ``config``, ``seeds`` and ``seconds``; ``returned``: the
    entries of the returned dict beside ``table``, ``paths`` and ``seconds``.
    """

    markdown: Callable[[float], str]
    results: dict
    returned: dict
    plots: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    echo: Callable[[float], str | None] | None = None


def run_experiment_body(name: str, config: dict, seeds: list[int], out: Path, body: Callable[[list[int]], ExperimentOutput], *,
                        echo: Callable[[str], None] = print, threads: int | None = None) -> dict:
    """Run ``body(seeds)`` with ``config["threads"]`` torch threads (else ``threads``, else the current count), write its outputs to ``out``.

    Returns ``{"table": the Markdown, "paths": the files written, "seconds": the body's wall time, **output.returned}``.
    """
    threads_before = torch.get_num_threads()
    torch.set_num_threads(int(config.get("threads", threads or threads_before)))
    started = time.perf_counter()
    try:
        output = body(seeds)
    finally:
        torch.set_num_threads(threads_before)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    text = output.markdown(seconds)
    (out / "table.md").write_text(text)
    paths = [out / "table.md"]
    for filename, plot in output.plots.items():
        plot(out / filename)
        paths.append(out / filename)
    payload = {"name": name, "config": config, "seeds": len(seeds), "seconds": seconds, **output.results}
    (out / "results.json").write_text(json.dumps(json_safe(payload), indent=1, default=str))
    paths.append(out / "results.json")
    shown = output.echo(seconds) if output.echo is not None else text
    if shown is not None:
        echo(shown)
    return {"table": text, "paths": paths, "seconds": seconds, **output.returned}
