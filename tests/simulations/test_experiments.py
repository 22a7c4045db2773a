"""Quick runs of the four named experiments (the [quick] part of experiments/NAME.toml) and the CLI."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from fedlrs.experiments.linear import load_experiment
from fedlrs.experiments.tables import aggregate, markdown_table
from fedlrs.experiments.cli import experiment_commands


@pytest.fixture(scope="module")
def app():
    app = typer.Typer()
    experiment_commands(app)
    return app


def _run(app, tmp_path, name):
    out = tmp_path / name
    result = CliRunner().invoke(app, [name, "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for file in ("table.md", "results.json"):
        assert (out / file).exists()
    assert list(out.glob("*.png"))
    payload = json.loads((out / "results.json").read_text())
    return result.output, payload, {(r["method"], str(r.get("epsilon", ""))): r for r in payload["rows"]}


def test_hsb_quick_lrs_beats_global_and_is_close_to_mixedlm(app, tmp_path):
    output, payload, rows = _run(app, tmp_path, "hsb")
    assert "| method |" in output
    lrs, glob = rows[("lrs", "inf")]["test_rmse"], rows[("global", "inf")]["test_rmse"]
    mixed = next(r for (m, _), r in rows.items() if m.startswith("MixedLM"))["test_rmse"]
    assert lrs < glob
    assert lrs <= 1.03 * mixed
    assert rows[("lrs", "inf")]["storage"] < 4
    # tuning happened on validation rows, and private tuning is accounted
    assert all("validation_rmse" in c for t in payload["tuning"] for c in t["candidates"])
    spent = [t["epsilon_with_tuning"] for t in payload["tuning"] if t["epsilon_with_tuning"] is not None]
    assert spent and all(s >= float(t["epsilon"]) * 0.99 for s, t in zip(spent, [t for t in payload["tuning"] if t["epsilon_with_tuning"] is not None]))


def test_synthetic_privacy_quick_error_falls_with_epsilon(app, tmp_path):
    _, _, rows = _run(app, tmp_path, "synthetic-privacy")
    lrs = [rows[("lrs (k=2)", e)]["distance"] for e in ("1.0", "8.0", "inf")]
    assert lrs[0] > lrs[1] > lrs[2]
    assert rows[("lrs (k=2)", "8.0")]["test_mse"] < rows[("low-rank only (k=0)", "8.0")]["test_mse"]
    assert rows[("lrs (k=2)", "1.0")]["epsilon_spent"] <= 1.0 + 1e-9


def test_sample_complexity_quick_lrs_improves_with_m_and_beats_baselines(app, tmp_path):
    _, payload, _ = _run(app, tmp_path, "synthetic-sample-complexity")
    rows = {(r["m"], r["method"]): r for r in payload["rows"]}
    assert rows[(40, "lrs")]["test_mse"] < rows[(10, "lrs")]["test_mse"]
    for other in ("low-rank only", "local only", "global"):
        assert rows[(10, "lrs")]["test_mse"] < rows[(10, other)]["test_mse"]
    assert rows[(10, "oracle (U* known)")]["test_mse"] <= rows[(10, "lrs")]["test_mse"]


def test_movielens_quick_reports_every_method(app, tmp_path):
    _, _, rows = _run(app, tmp_path, "movielens")
    methods = {m for m, _ in rows}
    assert {"global", "local only", "low-rank only", "lrs", "global (DP-FedAvg)", "low-rank only (private)", "lrs (private)"} <= methods
    assert all(math.isfinite(r["test_rmse"]) and 0.5 < r["test_rmse"] < 3 for r in rows.values())


def test_own_data_command_and_its_clear_errors(app, tmp_path):
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(20), 15)
    x = rng.normal(size=(len(users), 3))
    frame = pd.DataFrame({"u": users, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": x @ [1.0, 2.0, -1.0] + rng.normal(size=len(users)) * 0.1})
    path = tmp_path / "own.csv"
    frame.to_csv(path, index=False)
    args = ["own-data", "--path", str(path), "--user-column", "u", "--target-column", "y", "--rank", "1", "--sparsity", "1"]
    ok = CliRunner().invoke(app, [*args, "--feature-columns", "a,b,c"])
    assert ok.exit_code == 0, ok.output
    assert "per-user test RMSE" in ok.output and "lrs" in ok.output
    private = CliRunner().invoke(app, [*args, "--feature-columns", "a,b,c", "--epsilon", "4"])
    assert private.exit_code == 0 and "private, epsilon=" in private.output
    bad = CliRunner().invoke(app, [*args, "--feature-columns", "a,zz"])
    assert bad.exit_code == 2 and "['zz'] missing" in bad.output


def test_config_errors_and_table_helpers(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        load_experiment("no-such-experiment")
    quick = load_experiment("synthetic-privacy", quick=True)
    assert quick["seeds"] == 1 and load_experiment("synthetic-privacy")["seeds"] >= 3
    rows = aggregate([{"m": 1, "x": 1.0}, {"m": 1, "x": 3.0}], ["m"], ["x"])
    assert rows[0]["x"] == 2.0 and rows[0]["x_std"] == pytest.approx(math.sqrt(2))
    assert "2 ± 1.4" in markdown_table(rows, ["m", "x"])


def test_the_runner_core_writes_every_output_and_restores_the_threads(tmp_path):
    """run_experiment_body: the body runs under the config's threads (restored after), its outputs are written one way."""
    import json

    import torch

    from fedlrs.experiments.runner import ExperimentOutput, run_experiment_body

    seen, printed, before = {}, [], torch.get_num_threads()

    def body(seeds):
        seen["threads"], seen["seeds"] = torch.get_num_threads(), seeds
        return ExperimentOutput(markdown=lambda seconds: f"### x\n\n| a |\n\n{len(seeds)} seeds, {seconds:.0f} s\n",
                                plots={"p.png": lambda path: path.write_bytes(b"png")}, results={"rows": [{"a": float("inf")}]},
                                returned={"rows": [1]})

    result = run_experiment_body("x", {"threads": 1, "k": 2}, [3, 4], tmp_path / "out", body, echo=printed.append)
    assert seen == {"threads": 1, "seeds": [3, 4]} and torch.get_num_threads() == before
    assert [p.name for p in result["paths"]] == ["table.md", "p.png", "results.json"] and result["rows"] == [1]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (saved["name"], saved["config"], saved["seeds"], saved["rows"]) == ("x", {"threads": 1, "k": 2}, 2, [{"a": "inf"}])
    assert printed == [(tmp_path / "out" / "table.md").read_text()] == [result["table"]]
