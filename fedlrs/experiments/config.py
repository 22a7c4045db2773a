"""The experiments' configs: where they live, how ``[quick]`` merges in, the epsilon sweep and delta."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

from fedlrs.experiments.tables import INF

EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"


def merge_config(base: dict, override: dict) -> dict:
    """A deep copy of ``base`` with ``override`` merged in: nested tables merge key by key, any other value replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge_config(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_experiment(name: str, *, kinds: tuple[str, ...], quick: bool, directory: Path | None, unknown_hint: str = "") -> tuple[dict, Path]:
    """``(config, path)`` of ``DIR/NAME.toml`` (``DIR``: ``directory``, else :data:`EXPERIMENTS_DIR`), with its ``[quick]``
    table merged in when ``quick`` and ``config["quick"] = quick``; refused when the file is missing (the message ends
    with ``unknown_hint``) or its ``kind`` is not one of ``kinds``."""
    path = (directory or EXPERIMENTS_DIR) / f"{name}.toml"
    if not path.exists():
        raise ValueError(f"experiment {name!r} unknown: no {path}{unknown_hint}.")
    config = tomllib.loads(path.read_text())
    quick_part = config.pop("quick", {})
    if quick:
        config = merge_config(config, quick_part)
    if config.get("kind") not in kinds:
        rule = f"must be {kinds[0]!r}" if len(kinds) == 1 else f"must be one of {sorted(kinds)}"
        raise ValueError(f"{path}: kind == {config.get('kind')!r}, {rule}.")
    config["quick"] = quick
    return config, path


def epsilon_sweep(config: dict) -> list[float]:
    """The epsilon sweep; ``"inf"`` (or inf) means the non-private run."""
    return [INF if str(e).lower() in ("inf", "infinity") else float(e) for e in config.get("epsilons", [])]


def config_delta(config: dict, num_users: int) -> float:
    """``delta`` from the config: a number, or ``"1/N^1.1"`` (N = users)."""
    value = config.get("delta", 1e-6)
    if isinstance(value, str):
        if value.replace(" ", "") != "1/N^1.1":
            raise ValueError(f"delta == {value!r}, must be a number or '1/N^1.1'.")
        return 1.0 / num_users**1.1
    return float(value)


def seeds_and_folder(config: dict, *, name: str, seeds: int | None, out: str | Path | None) -> tuple[int, Path]:
    """The number of seeds (``seeds``, else the config's ``seeds``, default 3; an integer >= 1) and the
    output folder (``out``, else ``results/<name>``), created."""
    n_seeds = seeds if seeds is not None else int(config.get("seeds", 3))
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"seeds == {n_seeds!r}, must be an integer >= 1.")
    folder = Path(out if out is not None else Path("results") / name)
    folder.mkdir(parents=True, exist_ok=True)
    return n_seeds, folder
