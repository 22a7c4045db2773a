"""``fedlrs experiment nn-digits`` and ``nn-movielens``: LRS-NN against FedAvg, FedAvg+FT, FedRep and local only.

Every method uses the task's network (:mod:`fedlrs.nn.tasks`) and runs through the same
private loop, :func:`fedlrs.tasks.network.run_federated` (Poisson sampling, user-level
clipping of the whole flattened contribution, Gaussian noise, the ledger, division by
``q N``), at each epsilon of the config and without privacy (``inf``), over several seeds.
The table reports, as mean ± standard deviation over seeds:

- the mean per-user test metric: accuracy ``mean_i (1/m_i) sum_j 1[argmax f(x_ij) = y_ij]``
  (cross-entropy tasks) or RMSE ``mean_i sqrt((1/m_i) sum_j (f(x_ij) - y_ij)^2)`` (mse tasks),
  over users with test examples;
- epsilon spent by the reported run (RDP, from its ledger) and epsilon including the
  private tuning runs (their ledgers composed with the reported run's);
- numbers stored per user (``method.personal_size``: LRS-NN ``r + 2k``, FedRep the head,
  FedAvg+FT and local only the whole network, FedAvg 0), the server's model size (numbers
  in the published shared state) and the upload per sampled user and round.

Hyperparameters are chosen on validation rows only, on the first seed's task: each
candidate of a method's grid is trained on ``train`` and scored on ``validation``; the
chosen one is then trained on ``train + validation`` of every seed and scored on ``test``.
FedAvg+FT fine-tunes the chosen FedAvg run's network (its fine-tuning grid is scored the
same way; nothing extra is released), local only fine-tunes the initial network. Private
runs reuse the non-private choice of each method's knobs and choose the clipping bound C
on validation with private runs, whose ledgers count in ``epsilon incl. tuning``. Every
reported private run's privacy report is checked with :func:`fedlrs.privacy.audit_report`
(what ``fedlrs privacy audit`` runs); the first seed's reports and ledgers are written
under ``OUT/privacy/``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedlrs.privacy import Ledger, PrivacyBudget, audit_report, compute_epsilon, move_aside, write_privacy_report
from fedlrs.privacy.ledger import run_folder
from fedlrs.experiments.config import seeds_and_folder
from fedlrs.experiments.runner import ExperimentOutput, run_experiment_body
from fedlrs.experiments.linear import INF, config_delta, config_grid, epsilon_sweep
from fedlrs.experiments.tables import aggregate, markdown_table, plot_privacy, plot_rounds
from fedlrs.tasks.network import run_federated

from fedlrs.nn.baselines import FedAvgFT, local_only
from fedlrs.nn.federated import FederatedResult, NetworkConfig, contribution_shapes
from fedlrs.experiments.nn_setup import NAMES  # noqa: F401 - the CLI lists the network experiments from here
from fedlrs.experiments.nn_setup import LABELS, error, load_nn_experiment, loop_config, make_method, state_size, user_metric
from fedlrs.nn.method import FederatedMethod, State, UserExamples
from fedlrs.nn.tasks import Task, load_task

# ---------------------------------------------------------------- runs


def _choose(candidates: list[dict], score: Callable[[dict], float], loss: str) -> tuple[dict, list[dict]]:
    """The candidate with the smallest validation error, and every candidate with its validation metric.

    A single candidate is chosen without being scored (nothing is trained, nothing released): ``validation`` is None.
    """
    if len(candidates) == 1:
        return dict(candidates[0]), [{**candidates[0], "validation": None}]
    scored = [{**c, "validation": score(c)} for c in candidates]
    best = min(scored, key=lambda c: math.inf if math.isnan(c["validation"]) else error(c["validation"], loss))
    return {k: v for k, v in best.items() if k != "validation"}, scored


class _Runner:
    """One experiment's runs: tuning on the first seed, then the reported runs of every seed."""

    def __init__(self, config: dict, seeds: list[int], out: Path, echo: Callable[[str], None]):
        self.config, self.seeds, self.out, self.echo = config, seeds, out, echo
        self.records: list[dict] = []
        self.tuning: list[dict] = []
        self.histories: dict[str, list[dict]] = {}
        self.audits: list[dict] = []
        self.chosen: dict[str, dict] = {}
        self.clips: dict[tuple[str, float], float] = {}
        self.tuning_events: dict[tuple[str, float], list] = {}
        self._cache: dict[tuple[str, str], tuple[FederatedMethod, FederatedResult]] = {}
        self.diverged: list[dict] = []

    # -- helpers
    def task(self, seed: int) -> Task:
        """The config's task for ``seed`` (``[task]`` knobs, quick sizes in a quick run)."""
        return load_task(self.config["task_name"], seed=seed, quick=self.config["quick"], **self.config["task"])

    def train(self, key: str, params: dict, task: Task, data: UserExamples, seed: int, *, epsilon: float = INF, delta: float = 1e-5, clip: float = 1.0,
              ledger: Ledger | None = None, evaluate=None, evaluate_every: int = 0, stage: str = "tuning") -> tuple[FederatedMethod, FederatedResult | None, Ledger | None]:
        """One run of ``key`` (``stage``: "tuning" or "reported"); a run whose contributions stop being finite (diverged)
        gives ``None`` and its ledger so far."""
        method = make_method(key, task, params)
        config = loop_config(self.config, seed, epsilon=epsilon, delta=delta, clip=clip, evaluate_every=evaluate_every)
        ledger = ledger if ledger is not None or not config.private else Ledger()
        evaluator = None if evaluate is None else (lambda shared, personal: evaluate(method, shared, personal))
        try:
            return method, run_federated(method, data, config, ledger=ledger, evaluate=evaluator), ledger
        except ValueError as failure:  # clipping refuses non-finite contributions: the run diverged
            if "finite" not in str(failure):
                raise
            self.diverged.append({"stage": stage, "method": LABELS[key], "epsilon": epsilon, "seed": seed, "params": params, "clip": clip, "error": str(failure)})
            self.echo(f"{LABELS[key]} (epsilon {epsilon:g}, clip {clip:g}, seed {seed}) diverged: {failure}")
            return method, None, ledger

    def finetuned(self, task: Task, params: dict, ft: dict) -> FedAvgFT:
        """FedAvg+FT with FedAvg's chosen knobs ``params`` and the fine-tuning knobs ``ft``."""
        return FedAvgFT(task.make_module, loss=task.loss, **params, **ft)

    # -- tuning (first seed, validation rows)
    def tune(self, task: Task, delta: float) -> None:
        """Choose every method's knobs on ``task.validation`` (fit on ``task.train``): non-private grids first, then
        the clip bound C of each private method and epsilon with private runs whose ledgers are kept for the tuning cost."""
        loss, seed = task.loss, self.seeds[0]

        def validation_metric(method, shared: State, personal: State) -> float:
            return user_metric(method.predict(shared, personal, task.validation.X), task.validation, loss)

        def choose(key: str, epsilon: float, grid: dict, score: Callable[[dict], float]) -> dict:
            best, scored = _choose(config_grid(grid), score, loss)
            self.tuning.append({"method": LABELS[key] + (" (private)" if math.isfinite(epsilon) else ""), "epsilon": epsilon, "chosen": best, "candidates": scored})
            return best

        for key, section in self.config["methods"].items():
            self.chosen[key] = choose(key, INF, section, lambda c, key=key: validation_metric(*self._fitted(key, c, task, seed)))
        if "fedavg" in self.chosen:
            def ft_score(c):
                _, shared, _ = self._fitted("fedavg", self.chosen["fedavg"], task, seed)
                method = self.finetuned(task, self.chosen["fedavg"], c)
                return validation_metric(method, shared, method.personalize(shared, {}, task.train, torch.Generator().manual_seed(seed)))

            self.chosen["fedavg+ft"] = choose("fedavg+ft", INF, self.config["finetune"], ft_score)

        def local_score(c):
            method = FedAvgFT(task.make_module, loss=loss, **c)
            return validation_metric(method, *local_only(method, task.train, torch.Generator().manual_seed(seed)))

        self.chosen["local"] = choose("local", INF, self.config["local"], local_score)
        self.echo(f"tuned on validation (seed {seed}): " + "; ".join(f"{LABELS[k]} {v}" for k, v in self.chosen.items()))

        for epsilon, key in itertools.product([e for e in epsilon_sweep(self.config) if e != INF], self.config["methods"]):
            ledgers = []

            def clip_score(c, key=key, epsilon=epsilon):
                method, result, ledger = self.train(key, self.chosen[key], task, task.train, seed, epsilon=epsilon, delta=delta, clip=c["clip"])
                ledgers.append(list(ledger.events))
                return math.nan if result is None else validation_metric(method, result.shared, result.personal)

            self.clips[(key, epsilon)] = choose(key, epsilon, {"clip": self.config["private"].get("clip", NetworkConfig.clip)}, clip_score)["clip"]
            self.tuning_events[(key, epsilon)] = [e for events in ledgers for e in events]
        self.echo(f"private clipping bounds chosen on validation: {self.clips}")

    def _fitted(self, key: str, params: dict, task: Task, seed: int) -> tuple[FederatedMethod, State, State]:
        """A non-private tuning run on ``task.train`` (cached: FedAvg+FT's tuning reuses FedAvg's)."""
        cache_key = (key, json.dumps(params, sort_keys=True))
        if cache_key not in self._cache:
            self._cache[cache_key] = self.train(key, params, task, task.train, seed)[:2]
        method, result = self._cache[cache_key]  # non-private runs never stop early: NaN predictions score NaN
        return method, result.shared, result.personal

    # -- reported runs
    def audited(self, result: FederatedResult, directory: Path) -> bool:
        """Write the run's privacy report to ``directory`` and audit it against its ledger file, with the RDP accountant
        (the budget's; ``fedlrs privacy audit`` on the written report adds the PLD cross-check)."""
        c = result.config
        write_privacy_report(result.ledger, out_dir=directory, delta=c["delta"], config=c, accountants=("rdp",),
                             budget=PrivacyBudget(epsilon=c["target_epsilon"], delta=c["delta"], accountant=c["accountant"]),
                             planned_rounds=c["rounds"], calibrated_noise_multiplier=result.noise_multiplier)
        audit = audit_report(directory / "privacy_report.json", ledger_path=directory / "ledger.jsonl", accountants=("rdp",))
        self.audits.append({"report": str(directory), "ok": audit.ok, "reasons": list(audit.reasons)})
        if not audit.ok:
            raise RuntimeError(f"privacy audit failed for {directory}: {audit.reasons}")
        return audit.ok

    def report(self, task: Task, seed: int, delta: float) -> None:
        """The reported runs of ``seed``: every method at every epsilon on ``train + validation``, scored on ``test``."""
        loss = task.loss
        data = task.train_full
        gen = torch.Generator().manual_seed(seed)
        first = seed == self.seeds[0]
        every = max(1, self.config["loop"].get("rounds", 10) // 5)

        def test_metric(method, shared, personal) -> float:
            return user_metric(method.predict(shared, personal, task.test.X), task.test, loss)

        def track(method, shared, personal):
            return {"test": test_metric(method, shared, method.personalize(shared, personal, data, torch.Generator().manual_seed(seed)))}

        def add(key: str, epsilon: float, value: float, method, shared: State, **extra) -> None:
            self.records.append({
                "method": LABELS[key], "epsilon": epsilon, "seed": seed, "test": value, "storage": method.personal_size(shared),
                "server_size": state_size(shared), "upload": sum(math.prod(s) for s in contribution_shapes(method, shared).values()), **extra,
            })

        for epsilon in epsilon_sweep(self.config):
            private = math.isfinite(epsilon)
            for key in self.config["methods"]:
                started = time.perf_counter()
                extra, ledger, directory = {"epsilon_spent": None}, None, None
                if private:
                    directory = (self.out / "privacy" / f"{key}-eps{epsilon:g}") if first else run_folder(f"nn-{key}-eps{epsilon:g}-seed{seed}")
                    if (directory / "ledger.jsonl").exists():  # an earlier run's: kept, never deleted
                        move_aside(directory)
                    directory.mkdir(parents=True, exist_ok=True)
                    ledger = Ledger(directory / "ledger.jsonl")
                tracked = first and not private
                method, result, ledger = self.train(key, self.chosen[key], task, data, seed, epsilon=epsilon, delta=delta, clip=self.clips.get((key, epsilon), 1.0),
                                                    ledger=ledger, evaluate=track if tracked else None, evaluate_every=every if tracked else 0, stage="reported")
                if tracked:
                    self.histories[LABELS[key]] = [{"round": h["round"], "test": h["test"]} for h in result.history]
                if private:
                    extra["epsilon_spent"] = compute_epsilon(list(ledger.events), delta=delta).epsilon
                    extra["epsilon_with_tuning"] = compute_epsilon(self.tuning_events[(key, epsilon)] + list(ledger.events), delta=delta).epsilon
                    extra["clip"] = self.clips[(key, epsilon)]
                    extra["clip_bounds"] = None if result is None else result.clip_bounds
                    if result is not None:
                        extra["audit"] = self.audited(result, directory)
                shared = result.shared if result is not None else method.init_shared(gen)
                add(key, epsilon, math.nan if result is None else test_metric(method, shared, result.personal), method, shared, **extra)
                if key == "fedavg":
                    ft = self.finetuned(task, self.chosen["fedavg"], self.chosen["fedavg+ft"])
                    value = math.nan if result is None else test_metric(ft, shared, ft.personalize(shared, {}, data, gen))
                    add("fedavg+ft", epsilon, value, ft, shared, **extra)
                done = ", ".join(f"{r['method']} {r['test']:.4f}" for r in self.records[-(2 if key == "fedavg" else 1):])
                self.echo(f"seed {seed} eps {epsilon:g}: test {done} ({time.perf_counter() - started:.1f} s)")
        local = FedAvgFT(task.make_module, loss=loss, **self.chosen["local"])
        shared, personal = local_only(local, data, gen)
        self.records.append({"method": LABELS["local"], "epsilon": INF, "seed": seed, "test": test_metric(local, shared, personal),
                             "storage": local.personal_size(shared), "server_size": 0, "upload": 0, "epsilon_spent": 0.0})


# ---------------------------------------------------------------- entry point


def run_nn_experiment(name: str, *, quick: bool = False, seeds: int | None = None, out: str | Path | None = None,
                      echo: Callable[[str], None] = print, directory: Path | None = None) -> dict:
    """Run network experiment ``name`` over ``seeds`` seeds (0..seeds-1; default the config's), write ``out``.

    Writes ``table.md``, ``results.json`` (config, rows, per-seed records, tuning, audits,
    CPU wall time) and ``privacy_utility.png`` / ``rounds.png`` through the one runner core
    (:func:`fedlrs.experiments.runner.run_experiment_body`); returns the rows,
    records, the markdown, the written paths and the seconds taken.
    """
    config = load_nn_experiment(name, quick=quick, directory=directory)
    config["task_name"] = config.get("task_name", config.get("dataset", name))
    n_seeds, out = seeds_and_folder(config, name=name, seeds=seeds, out=out)
    return run_experiment_body(name, config, list(range(n_seeds)), out, lambda seed_list: _run_seeds(name, config, seed_list, out, echo, quick), echo=echo)


def _run_seeds(name: str, config: dict, seeds: list[int], out: Path, echo: Callable[[str], None], quick: bool) -> ExperimentOutput:
    """The body of a network experiment: tune on seed 0, report every seed, aggregate (rows, notes, plots)."""
    threads = torch.get_num_threads()
    started = time.perf_counter()
    runner = _Runner(config, seeds, out, echo)
    info = {}
    for seed in runner.seeds:
        task = runner.task(seed)
        delta = config_delta(config, task.num_users)
        if seed == runner.seeds[0]:
            info = {**task.info, "delta": delta}
            runner.tune(task, delta)
        runner.report(task, seed, delta)
        echo(f"seed {seed} done ({time.perf_counter() - started:.0f} s)")

    loss = "cross_entropy" if info.get("classes") else "mse"
    metric = "accuracy" if loss == "cross_entropy" else "RMSE"
    rows = aggregate(runner.records, ["method", "epsilon"], ["test"])
    order = list(LABELS.values())
    for row in rows:
        members = [r for r in runner.records if r["method"] == row["method"] and r["epsilon"] == row["epsilon"]]
        row.update(server_size=members[0]["server_size"], upload=members[0]["upload"])
        row["error"] = None if row["test"] is None else error(row["test"], loss)
        row["error_std"] = row["test_std"]
    rows.sort(key=lambda r: (-r["epsilon"], order.index(r["method"])))
    columns = ["method", "epsilon", "test", "epsilon_spent", "epsilon_with_tuning", "storage", "server_size", "upload"]
    headers = {"test": f"per-user test {metric}", "epsilon_spent": "epsilon spent (RDP, reported run)", "epsilon_with_tuning": "epsilon incl. clip tuning",
               "storage": "numbers stored/user", "server_size": "server model size", "upload": "upload/user/round"}
    table = markdown_table(rows, columns, headers)
    failed = [r for r in runner.records if isinstance(r["test"], float) and math.isnan(r["test"])]
    tail = "\n" + compare_lrs_fedrep(rows, loss)
    if runner.diverged:
        where = "; ".join(f"{d['stage']} run of {d['method']} at epsilon {d['epsilon']:g}, clip {d['clip']:g}, seed {d['seed']}" for d in runner.diverged)
        tail += f"\n{len(runner.diverged)} run(s) diverged (non-finite contributions; their ledgers still count): {where}."
    if failed:
        tail += f"\n{len(failed)} reported result(s) are NaN and left out of the means: " + "; ".join(sorted({f"{r['method']} at epsilon {r['epsilon']:g}" for r in failed})) + "."
    if config.get("notes"):
        tail += "\n" + config["notes"].strip()

    def note(seconds: float) -> str:
        return _notes(config, info, len(seeds), seconds, threads, quick, len(runner.audits), runner.tuning) + tail

    ylabel = "per-user test error (1 - accuracy)" if loss == "cross_entropy" else "per-user test RMSE"
    histories = {k: [{"round": h["round"], "error": error(h["test"], loss)} for h in v] for k, v in runner.histories.items()}
    plots = {
        "privacy_utility.png": lambda path: plot_privacy(rows, y="error", group="method", path=path, ylabel=ylabel,
                                                         title=f"{name}: privacy-utility (delta={info['delta']:.2g})"),
        "rounds.png": lambda path: plot_rounds(histories, y="error", path=path, ylabel=ylabel, title=f"{name}: non-private, after each round (seed 0)",
                                               logy=loss == "cross_entropy"),
    }
    results = {"task": info, "rows": rows, "records": runner.records, "tuning": runner.tuning, "chosen": runner.chosen,
               "clips": {f"{k} eps={e:g}": c for (k, e), c in runner.clips.items()}, "audits": runner.audits, "diverged": runner.diverged,
               "histories": runner.histories}
    return ExperimentOutput(markdown=lambda seconds: f"### {name}\n\n{table}\n\n{note(seconds)}\n", echo=lambda seconds: f"{table}\n{note(seconds)}",
                            plots=plots, results=results, returned={"rows": rows, "records": runner.records, "tuning": runner.tuning, "audits": runner.audits})


def compare_lrs_fedrep(rows: list[dict], loss: str) -> str:
    """One line: LRS-NN against FedRep at each epsilon (mean over seeds; better = higher accuracy or lower RMSE)."""
    by = {(r["method"], r["epsilon"]): r["test"] for r in rows}
    parts = []
    for epsilon in sorted({e for m, e in by if m == "LRS-NN" and ("FedRep", e) in by}, reverse=True):
        lrs, rep = by[("LRS-NN", epsilon)], by[("FedRep", epsilon)]
        verdict = "matches" if abs(lrs - rep) < 1e-3 else ("beats" if error(lrs, loss) < error(rep, loss) else "is behind")
        parts.append(f"epsilon {'inf' if epsilon == INF else f'{epsilon:g}'}: {lrs:.4g} vs {rep:.4g} (LRS-NN {verdict} FedRep)")
    return "LRS-NN vs FedRep at equal epsilon: " + "; ".join(parts) + "." if parts else ""


def _notes(config: dict, info: dict, n_seeds: int, seconds: float, threads: int, quick: bool, audits: int, tuning: list[dict]) -> str:
    loop = config["loop"]
    quantile = loop_config(config, 0, epsilon=1.0).clip_quantile
    tuned = any(t["method"].endswith("(private)") and t["candidates"][0]["validation"] is not None for t in tuning)
    clipping = ("private runs choose the clip bound C privately and 'epsilon incl. clip tuning' composes those runs' ledgers with the reported one"
                if tuned else "private runs use no tuned clip bound: 'epsilon incl. clip tuning' is the reported epsilon")
    if quantile > 0:
        clipping += (f"; adaptive clipping at the {quantile:g} quantile of the contributions' norms (round 1 clips at C = "
                     f"{config['private'].get('clip', NetworkConfig.clip)}, each later round at the quantile read from the previous "
                     "round's noised norm histogram, released with the contribution in the same accounted release, divided by "
                     "1 + D sigma^2 / (q N)^2, the noise of the released mean per unit bound: docs/privacy.md section 8)")
    lines = [
        f"{n_seeds} seed(s), mean ± standard deviation over seeds; {'quick' if quick else 'full'} run, {seconds:.0f} s CPU wall time "
        f"({threads} torch thread{'s' if threads > 1 else ''}).",
        f"Task: {info.get('users')} users; {info.get('split')}; {info.get('network')} ({info.get('parameters')} parameters). "
        f"Loop: {loop.get('rounds')} rounds, Poisson sampling q = {loop.get('sample_rate')}, user-level clipping of the whole contribution, "
        f"delta = {info['delta']:.2g}.",
        f"Hyperparameters were chosen on validation rows only (first seed); {clipping}. FedAvg+FT fine-tunes the FedAvg run's "
        "network (same ledger); local only trains alone and releases nothing. "
        f"All {audits} completed reported private runs pass the privacy audit (`fedlrs privacy audit`).",
    ]
    return "\n".join(lines)
