"""fedlrs.nn.tasks: shapes, label skew, determinism by seed, the documented split, clear errors."""

import numpy as np
import pytest
import torch

from fedlrs.nn.network import per_user_loss
from fedlrs.nn.tasks import TASKS, Task, concat_examples, load_task, mlp

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/nn/conftest.py


def _label_histograms(y: torch.Tensor, classes: int) -> np.ndarray:
    counts = torch.nn.functional.one_hot(y, classes).sum(dim=1).double()
    return (counts / counts.sum(dim=1, keepdim=True)).numpy()


@pytest.fixture(scope="module")
def digits():
    return load_task("nn-digits", seed=0, users=200)


def test_digits_shapes_and_documented_info(digits):
    assert isinstance(digits, Task) and digits.loss == "cross_entropy"
    assert digits.train.X.shape == (200, 20, 64) and digits.validation.X.shape == (200, 10, 64) and digits.test.X.shape == (200, 20, 64)
    assert digits.train.y.dtype == torch.int64 and digits.train.X.dtype == torch.float32
    assert 0 <= float(digits.train.X.min()) and float(digits.train.X.max()) <= 1
    assert digits.info["alpha"] == 0.5 and digits.info["users"] == 200 and digits.info["examples_per_user"] == {"train": 20, "validation": 10, "test": 20}
    assert digits.info["parameters"] == 64 * 32 + 32 + 32 * 10 + 10 and digits.info["last_layer_parameters"] == 330
    assert digits.train_full.X.shape == (200, 30, 64)


def test_digits_test_images_are_never_training_images():
    from sklearn.datasets import load_digits

    task = load_task("nn-digits", seed=3, users=100)
    images = load_digits().data.astype(np.float32) / 16.0
    lookup = {row.tobytes(): i for i, row in enumerate(images)}

    def ids(part):
        return {lookup[row.tobytes()] for row in part.X.reshape(-1, 64).numpy()}

    train, validation, test = ids(task.train), ids(task.validation), ids(task.test)
    assert not train & test and not train & validation and not validation & test


def test_digits_labels_are_skewed_and_alpha_controls_it(digits):
    per_user = _label_histograms(digits.test.y, 10)
    overall = per_user.mean(axis=0)
    tv = 0.5 * np.abs(per_user - overall).sum(axis=1).mean()
    assert tv > 0.4  # far from the global label mix
    assert overall.min() > 0.05  # yet every class is present overall
    flat = load_task("nn-digits", seed=0, users=200, alpha=100.0)
    flat_hist = _label_histograms(flat.test.y, 10)
    assert 0.5 * np.abs(flat_hist - flat_hist.mean(axis=0)).sum(axis=1).mean() < 0.5 * tv
    # a user's train and test labels come from the same class mix
    train = _label_histograms(digits.train.y, 10)
    same = np.abs(train - per_user).sum(axis=1).mean()
    shuffled = np.abs(train - per_user[np.roll(np.arange(200), 1)]).sum(axis=1).mean()
    assert same < 0.6 * shuffled


def test_tasks_are_deterministic_by_seed():
    for name in ("nn-digits", "nn-synthetic"):
        a, b, c = (load_task(name, seed=s, quick=True) for s in (1, 1, 2))
        assert torch.equal(a.train.X, b.train.X) and torch.equal(a.test.y, b.test.y)
        assert not torch.equal(a.train.X, c.train.X)
        ma, mb = (t.make_module(torch.Generator().manual_seed(5)) for t in (a, b))
        assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))


def test_movielens_quick_split_and_targets():
    task = load_task("nn-movielens", seed=0, quick=True)
    assert task.loss == "mse" and task.num_users == 60
    assert task.train.X.shape[2] == len(task.info["features"]) and task.train.X.shape[1] <= 100
    assert int(task.train.counts.min()) >= 1 and task.info["rows"]["train"] == int(task.train.counts.sum())
    real = task.test.y[task.test.mask] + 3.5
    assert 0.5 <= float(real.min()) and float(real.max()) <= 5.0
    module = task.make_module(torch.Generator().manual_seed(0))
    out = module(task.test.X)
    assert out.shape == (*task.test.X.shape[:2], 1)
    assert torch.isfinite(per_user_loss(out, task.test.y, task.test.mask, "mse")).all()


def test_mlp_and_concat():
    module = mlp([4, 3, 2], torch.Generator().manual_seed(0))
    assert [p.shape for p in module.parameters()] == [(3, 4), (3,), (2, 3), (2,)]
    assert float(module[0].weight.detach().abs().max()) <= 0.5
    task = load_task("nn-synthetic", seed=0)
    both = concat_examples(task.train, task.validation)
    assert torch.equal(both.counts, task.train.counts + task.validation.counts)


def test_errors_name_the_knob_value_and_rule():
    with pytest.raises(ValueError, match=r"task == 'nn-cifar', must be one of"):
        load_task("nn-cifar", seed=0)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['usres'\]"):
        load_task("nn-digits", seed=0, usres=10)
    with pytest.raises(ValueError, match=r"alpha == 0.0, must be a finite number > 0"):
        load_task("nn-digits", seed=0, alpha=0.0)
    with pytest.raises(ValueError, match=r"users == 1, must be an integer >= 2"):
        load_task("nn-digits", seed=0, users=1)
    with pytest.raises(ValueError, match=r"pool_fractions == .*summing to 1"):
        load_task("nn-digits", seed=0, pool_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"seed == -1, must be an integer >= 0"):
        load_task("nn-synthetic", seed=-1)
    with pytest.raises(ValueError, match=r"hidden == 0, must be an integer >= 1"):
        load_task("nn-synthetic", seed=0, hidden=[0])
    with pytest.raises(ValueError, match=r"sizes == \[3\]"):
        mlp([3], torch.Generator())
    assert set(TASKS) == {"nn-digits", "nn-movielens", "nn-synthetic"}
