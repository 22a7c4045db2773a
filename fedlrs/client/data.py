"""The device's data: one user's examples, from the built-in synthetic federation or a file.

Simulation: the node config's ``partition-id`` i picks user i of the synthetic
federation drawn by :func:`fedlrs.data.synthetic.make_lrs_data` with
``users = num-partitions`` and the run's ``data-*`` knobs, the same draw the
in-process engine gets for the same seed. Deployment: ``data-path`` in the node
config names a CSV, Parquet or NPZ file with features ``x0 .. x{d-1}`` (or an
``X`` array) and a target ``y``.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fedlrs.core import UserData
from fedlrs.federation_config import FederationConfig
from fedlrs.data.synthetic import SyntheticLRS, make_lrs_data


class DataError(ValueError):
    """The node's data cannot be loaded or does not fit the run's config."""


def synthetic_federation(config: FederationConfig, num_users: int) -> SyntheticLRS:
    """The built-in synthetic federation of ``num_users`` users for this run's ``data-*`` knobs."""
    return _synthetic(num_users, config.data_examples, config.dim, config.rank, config.sparsity,
                      config.data_noise, config.data_sparse_scale, config.data_seed)


@functools.lru_cache(maxsize=2)
def _synthetic(users: int, examples: int, dim: int, rank: int, sparsity: int, noise: float,
               sparse_scale: float, seed: int) -> SyntheticLRS:
    # Deterministic in its arguments: a simulated node draws it once per process, not once per user.
    return make_lrs_data(users=users, examples=examples, dim=dim, rank=rank, sparsity=sparsity,
                         noise=noise, sparse_scale=sparse_scale, seed=seed)


def read_table(path: str | Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of a CSV/Parquet (columns ``x0..x{dim-1}``, ``y``) or NPZ (arrays ``X``, ``y``) file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data-path == '{path}' is not a file.")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv", ".parquet", ".pq"):
        raise DataError(f"data-path == '{path}' has suffix {suffix!r}, must be .csv, .parquet or .npz.")
    try:
        X, y = _read_arrays(path, suffix, dim)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - a file that cannot be parsed is the node's data error
        raise DataError(f"{path}: cannot be read as {suffix[1:]}: {type(error).__name__}: {error}") from error
    if X.ndim != 2 or X.shape[1] != dim or y.shape != (X.shape[0],):
        raise DataError(f"{path}: X has shape {X.shape} and y {y.shape}, must be (m, {dim}) and (m,).")
    if X.shape[0] == 0:
        raise DataError(f"{path}: no examples; a user needs at least one.")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise DataError(f"{path}: X or y holds NaN or inf.")
    return X, y


def _real_array(path: Path, name: str, value) -> np.ndarray:
    """``value`` as float64, refusing what is not plain real numbers (complex, structured, strings)."""
    value = np.asarray(value)
    if value.dtype.kind not in "biuf":
        raise DataError(f"{path}: {name} has dtype {value.dtype}, must be real numbers (bool, int or float).")
    return value.astype(np.float64)


def _read_arrays(path: Path, suffix: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    if suffix == ".npz":
        with np.load(path) as archive:
            missing = {"X", "y"} - set(archive.files)
            if missing:
                raise DataError(f"{path}: missing array {sorted(missing)[0]!r}; an NPZ needs 'X' (m, d) and 'y' (m,).")
            return _real_array(path, "X", archive["X"]), _real_array(path, "y", archive["y"])
    import pandas as pd

    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            header = next(csv.reader(handle), [])
        frame = pd.read_csv(path)
    else:
        frame = pd.read_parquet(path)
        header = [str(c) for c in frame.columns]
    columns = [f"x{j}" for j in range(dim)]
    repeated = sorted({c for c in header if header.count(c) > 1} & set(columns + ["y"]))
    if repeated:
        raise DataError(f"{path}: column {repeated[0]!r} appears more than once.")
    missing = [c for c in columns + ["y"] if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r}; need x0..x{dim - 1} and y.")
    return (np.stack([_real_array(path, c, frame[c].to_numpy()) for c in columns], axis=1).reshape(len(frame), dim),
            _real_array(path, "y", frame["y"].to_numpy()))


def _check_statistics(path: str, X: np.ndarray, y: np.ndarray, dtype: torch.dtype) -> None:
    """Refuse values so large that the data, ``X^T X``, ``X^T y`` or the moments overflow in the run's dtype."""
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    with np.errstate(over="ignore", invalid="ignore"):
        Xc, yc = X.astype(np_dtype), y.astype(np_dtype)
        weighted = Xc * yc[:, None]
        products = (Xc, yc, Xc.T @ Xc, Xc.T @ yc, weighted.T @ weighted, np.sum(weighted * weighted))
        if not all(np.isfinite(p).all() for p in products):
            raise DataError(f"{path}: values up to {float(max(np.abs(X).max(), np.abs(y).max())):.3g} overflow "
                            f"{np_dtype} in X^T X, X^T y or the moments; rescale the data.")


def load_user_data(config: FederationConfig, node_config: Mapping[str, Any]) -> UserData:
    """This node's examples as a batch of one user, in the run's dtype."""
    if config.dataset == "node" or "data-path" in node_config:
        if "data-path" not in node_config:
            raise DataError("dataset == 'node' needs 'data-path' in the node config (flower-supernode --node-config \"data-path='...'\").")
        X, y = read_table(str(node_config["data-path"]), config.dim)
        _check_statistics(str(node_config["data-path"]), X, y, config.torch_dtype)
        data = UserData(torch.from_numpy(X)[None], torch.from_numpy(y)[None], torch.ones(1, len(y), dtype=torch.bool))
        return data.to(dtype=config.torch_dtype)
    for key in ("partition-id", "num-partitions"):
        if key not in node_config:
            raise DataError(f"dataset == 'synthetic' needs {key!r} in the node config.")
    index, users = int(node_config["partition-id"]), int(node_config["num-partitions"])
    if not 0 <= index < users:
        raise DataError(f"partition-id == {index}, must be in [0, num-partitions == {users}).")
    train = synthetic_federation(config, users).train
    return train.select(torch.tensor([index])).to(dtype=config.torch_dtype)
