import json

import numpy as np
import pytest

from fedlrs.experiments.personalized import run_pr_simulation


def test_quick_experiment_writes_outputs(tmp_path, capsys):
    res = run_pr_simulation(quick=True, out_dir=tmp_path, seed=0)
    assert res["config"]["quick"] and res["config"]["repetitions"] == 2
    for f in ("table.md", "results.json", "parameters.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "PR" in capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    m = saved["methods"]
    assert m["PR"]["recovery"]["mean"] < m["Population"]["recovery"]["mean"]
    assert "| PR |" in (tmp_path / "table.md").read_text()


def test_experiment_validates():
    with pytest.raises(ValueError, match="repetitions == 0, must be >= 1"):
        run_pr_simulation(repetitions=0)


@pytest.mark.slow
def test_pr_recovers_best_on_the_paper_setting(tmp_path):
    res = run_pr_simulation(repetitions=3, out_dir=tmp_path, seed=0)
    m = {k: v["recovery"]["mean"] for k, v in res["methods"].items()}
    assert m["PR"] < 0.95 * min(v for k, v in m.items() if k != "PR")
    assert m["PR"] < 0.6 * m["Population"]
    assert res["methods"]["PR"]["mse"]["mean"] < 0.025  # paper 0.020, within 25%
