"""The experiments' outputs: rows aggregated over seeds, markdown tables, JSON-safe payloads and PNG plots.

Shared by every experiment runner (:mod:`fedlrs.experiments.linear`, :mod:`fedlrs.experiments.nn`,
:mod:`fedlrs.experiments.recsys`); matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

#: the epsilon of a non-private run
INF = float("inf")


def aggregate(records: list[dict], keys: list[str], metrics: list[str]) -> list[dict]:
    """Mean and standard deviation (over seeds) of ``metrics`` for each value of ``keys``, in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault(tuple(record.get(k) for k in keys), []).append(record)
    rows = []
    for key, members in groups.items():
        row = dict(zip(keys, key))
        row["seeds"] = len(members)
        for metric in metrics:
            values = [m[metric] for m in members if m.get(metric) is not None and not (isinstance(m[metric], float) and math.isnan(m[metric]))]
            row[metric] = float(np.mean(values)) if values else None
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None)
        for extra in ("storage", "epsilon_spent", "epsilon_with_tuning"):
            values = [m[extra] for m in members if m.get(extra) is not None]
            if values:
                row[extra] = max(values) if extra.startswith("epsilon") else values[0]
        rows.append(row)
    return rows


def _cell(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None:
        return "-"
    if column == "epsilon":
        return "inf (non-private)" if value == INF else f"{value:g}"
    if isinstance(value, float):
        std = row.get(f"{column}_std")
        text = f"{value:.4g}"
        return f"{text} ± {std:.2g}" if std is not None and f"{column}_std" in row and row.get("seeds", 1) > 1 else text
    return str(value)


def markdown_table(rows: list[dict], columns: list[str], headers: dict[str, str] | None = None) -> str:
    """A GitHub markdown table of ``rows``; floats as ``mean ± std`` when a ``*_std`` column exists."""
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, c) for c in columns) + " |")
    return "\n".join(lines)


def json_safe(value):
    """``value`` with inf and nan floats as strings and numpy scalars as Python numbers, nested through dicts and lists (strict JSON)."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


# ---------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(rows: list[dict], *, x: str, y: str, group: str, path: Path, xlabel: str, ylabel: str, title: str, logx=False, logy=True) -> None:
    """One line per value of ``group``: mean ``y`` against ``x`` with a ± std band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r[group] for r in rows):
        pts = sorted((r[x], r[y], r.get(f"{y}_std") or 0.0) for r in rows if r[group] == label and r.get(y) is not None)
        if not pts:
            continue
        xs, ys, ss = map(np.asarray, zip(*pts))
        ax.plot(xs, ys, marker="o", label=str(label))
        ax.fill_between(xs, np.maximum(ys - ss, 1e-12) if logy else ys - ss, ys + ss, alpha=0.2)
    if logx:
        ax.set_xscale("log", base=2)
    _finish(plt, fig, ax, path, xlabel=xlabel, ylabel=ylabel, title=title, logy=logy)


def _finish(plt, fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str, logy: bool) -> None:
    """Labels, grid, legend (when any line has one), then save and close."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_privacy(rows: list[dict], *, y: str, group: str, path: Path, ylabel: str, title: str) -> None:
    """Error against epsilon; the non-private value of each group as a dashed horizontal line."""
    finite = [r for r in rows if r["epsilon"] != INF]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, label in enumerate(dict.fromkeys(r[group] for r in rows)):
        color = f"C{i}"
        pts = sorted((r["epsilon"], r[y], r.get(f"{y}_std") or 0.0) for r in finite if r[group] == label and r.get(y) is not None)
        if pts:
            xs, ys, ss = map(np.asarray, zip(*pts))
            ax.errorbar(xs, ys, yerr=ss, marker="o", label=str(label), color=color, capsize=3)
        for r in rows:
            if r[group] == label and r["epsilon"] == INF and r.get(y) is not None:
                ax.axhline(r[y], ls="--", color=color, alpha=0.7, label=f"{label} (non-private)" if not pts else None)
    ax.set_xscale("log", base=2)
    _finish(plt, fig, ax, path, xlabel="epsilon (user-level)", ylabel=ylabel, title=title, logy=True)


def plot_rounds(histories: dict[str, list[dict]], *, y: str, path: Path, ylabel: str, title: str, logy=True) -> None:
    """Error after each round (round 0: the initialization), one line per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, history in histories.items():
        pts = [(h["round"], h[y]) for h in history if h.get(y) is not None]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=label)
    _finish(plt, fig, ax, path, xlabel="round", ylabel=ylabel, title=title, logy=logy)
