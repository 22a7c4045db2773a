"""fedlrs.experiments.nn: the quick nn-digits run through the CLI, its table and audits; metrics and config errors."""

import json
import math

import pytest
import torch
import typer
from typer.testing import CliRunner

from fedlrs.nn.baselines import FedAvg
from fedlrs.experiments.nn import INF, _Runner, compare_lrs_fedrep
from fedlrs.experiments.nn_setup import load_nn_experiment, make_method, user_metric
from fedlrs.nn.method import UserExamples
from fedlrs.nn.tasks import load_task
from fedlrs.privacy import audit_report
from fedlrs.experiments.cli import experiment_commands

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/nn/conftest.py

METHODS = {"LRS-NN", "FedAvg", "FedAvg+FT", "FedRep"}


def _quick(tmp_path_factory, name):
    app = typer.Typer()
    experiment_commands(app)
    out = tmp_path_factory.mktemp("nn") / name
    result = CliRunner().invoke(app, [name, "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def quick_digits(tmp_path_factory):
    return _quick(tmp_path_factory, "nn-digits")


def test_quick_run_writes_its_table_plots_and_results(quick_digits):
    out, output, payload = quick_digits
    assert (out / "privacy_utility.png").exists() and (out / "rounds.png").exists()
    table = (out / "table.md").read_text()
    assert table.startswith("### nn-digits") and "| per-user test accuracy |" in table.splitlines()[2].replace("| method | epsilon ", "|")
    assert "chosen on validation rows only" in table and "CPU wall time" in table
    assert "| LRS-NN |" in output
    rows = {(r["method"], r["epsilon"]): r for r in payload["rows"]}
    for method in METHODS:
        for epsilon in ("inf", 4.0):
            row = rows[(method, epsilon)]
            assert 0.1 <= row["test"] <= 1.0  # an accuracy
    assert rows[("local only", "inf")]["epsilon_spent"] == 0
    # storage: LRS r + 2k, FedAvg nothing, FedAvg+FT the whole network, FedRep the head
    lrs = payload["chosen"]["lrs"]
    assert rows[("LRS-NN", "inf")]["storage"] == lrs["rank"] + 2 * lrs["sparsity"]
    assert rows[("FedAvg", "inf")]["storage"] == 0
    assert rows[("FedAvg+FT", "inf")]["storage"] == payload["task"]["parameters"] == rows[("FedAvg", "inf")]["server_size"]
    assert rows[("FedRep", "inf")]["storage"] == payload["task"]["last_layer_parameters"]
    # the private runs spent at most their epsilon, tuning is counted on top, every report was audited
    for method in METHODS:
        row = rows[(method, 4.0)]
        assert row["epsilon_spent"] <= 4.0 + 1e-9 and row["epsilon_with_tuning"] >= row["epsilon_spent"]
    assert len(payload["audits"]) == 3 and all(a["ok"] for a in payload["audits"])
    assert all("validation" in c for t in payload["tuning"] for c in t["candidates"])
    scored = [t for t in payload["tuning"] if len(t["candidates"]) > 1]
    assert scored and all(c["validation"] is not None for t in scored for c in t["candidates"])


def test_quick_movielens_reports_rmse_for_every_method(tmp_path_factory):
    out, _, payload = _quick(tmp_path_factory, "nn-movielens")
    table = (out / "table.md").read_text()
    assert "per-user test RMSE" in table and "LRS-NN vs FedRep at equal epsilon: epsilon inf:" in table
    rows = {(r["method"], r["epsilon"]): r for r in payload["rows"]}
    assert {m for m, _ in rows} == METHODS | {"local only"}
    for method in ("LRS-NN", "FedAvg", "FedAvg+FT", "local only"):
        assert 0.5 < rows[(method, "inf")]["test"] < 1.5  # ratings 0.5-5: an RMSE near 1
    assert rows[("LRS-NN", "inf")]["storage"] == payload["chosen"]["lrs"]["rank"] + 2 * payload["chosen"]["lrs"]["sparsity"]
    assert all(a["ok"] for a in payload["audits"])


def test_comparison_line_says_where_lrs_is_behind():
    rows = [{"method": "LRS-NN", "epsilon": INF, "test": 0.9}, {"method": "FedRep", "epsilon": INF, "test": 0.8},
            {"method": "LRS-NN", "epsilon": 1.0, "test": 0.5}, {"method": "FedRep", "epsilon": 1.0, "test": 0.6}]
    line = compare_lrs_fedrep(rows, "cross_entropy")
    assert line == "LRS-NN vs FedRep at equal epsilon: epsilon inf: 0.9 vs 0.8 (LRS-NN beats FedRep); epsilon 1: 0.5 vs 0.6 (LRS-NN is behind FedRep)."
    assert "(LRS-NN is behind FedRep)" in compare_lrs_fedrep(rows[:2], "mse")


def test_quick_run_reports_pass_the_audit_with_pld(quick_digits):
    out, _, _ = quick_digits
    report = out / "privacy" / "lrs-eps4"
    result = audit_report(report / "privacy_report.json", ledger_path=report / "ledger.jsonl")
    assert result.ok, result.reasons
    assert set(result.recomputed) == {"rdp", "pld"}


def test_user_metric_is_the_mean_over_users_of_each_users_metric():
    X = torch.zeros(2, 3, 1)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    labels = UserExamples(X, torch.tensor([[0, 1, 0], [1, 0, 0]]), mask)
    logits = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])
    assert user_metric(logits, labels, "cross_entropy") == pytest.approx((0.5 + 1.0) / 2)
    targets = UserExamples(X, torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]]), mask)
    outputs = torch.tensor([[[0.0], [0.0], [0.0]], [[0.0], [5.0], [5.0]]])
    assert user_metric(outputs, targets, "mse") == pytest.approx((math.sqrt(5.0) + 2.0) / 2)
    # a user without examples is left out
    empty = UserExamples(X, targets.y, torch.tensor([[True, False, False], [False, False, False]]))
    assert user_metric(outputs, empty, "mse") == pytest.approx(1.0)


def test_config_errors_name_the_file_and_rule(tmp_path):
    with pytest.raises(ValueError, match=r"experiment 'nn-nothing' unknown"):
        load_nn_experiment("nn-nothing", directory=tmp_path)
    (tmp_path / "bad.toml").write_text('kind = "real"\n')
    with pytest.raises(ValueError, match=r"kind == 'real', must be 'nn'"):
        load_nn_experiment("bad", directory=tmp_path)
    (tmp_path / "partial.toml").write_text('kind = "nn"\n[task]\n[loop]\n')
    with pytest.raises(ValueError, match=r"section\(s\) \['methods', 'finetune', 'local', 'private'\] missing"):
        load_nn_experiment("partial", directory=tmp_path)
    (tmp_path / "odd.toml").write_text('kind = "nn"\n[task]\n[loop]\n[finetune]\n[local]\n[private]\n[methods.fedprox]\nmu = 1\n')
    with pytest.raises(ValueError, match=r"\[methods\] has \['fedprox'\], must be among"):
        load_nn_experiment("odd", directory=tmp_path)
    task = load_task("nn-synthetic", seed=0, users=4)
    with pytest.raises(ValueError, match=r"\[methods.fedavg\]: .*unexpected keyword argument 'rank'"):
        make_method("fedavg", task, {"rank": 2})
    config = load_nn_experiment("nn-digits", quick=True)
    assert config["quick"] and config["task"]["users"] == 60 and config["epsilons"] == [4, "inf"]


def test_a_diverging_private_run_is_recorded_with_its_ledger_not_raised(tmp_path):
    config = load_nn_experiment("nn-digits", quick=True)
    runner = _Runner(config, [0], tmp_path, echo=lambda line: None)
    task = load_task("nn-synthetic", seed=0, users=10)
    method, result, ledger = runner.train("fedavg", {"lr": 1e30}, task, task.train, 0, epsilon=4.0, delta=1e-3)
    assert result is None and isinstance(method, FedAvg)
    assert len(ledger.events) < config["loop"]["rounds"]  # stopped at the round it diverged; earlier releases stay in the ledger
    assert runner.diverged[0]["stage"] == "tuning" and runner.diverged[0]["method"] == "FedAvg" and "finite" in runner.diverged[0]["error"]
