"""The per-task, per-policy table the study summaries print: mean over seeds with a 95% t-interval.

``memory_summary.py`` (MiniGrid success) and ``returns_summary.py`` (POPGym and MinAtar
returns) build one row per run; this groups the rows by training task and policy, prints the
markdown table and writes the JSON. The other experiment scripts share its JSON writer, its
label for a saved model and its builder of an untrained MiniGrid agent.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from envs.minigrid import make_minigrid
from rim_agents.stats import t_half_width
from rim_agents.training import build_algorithm_kwargs, make_config


def write_json(data: Any, path: Path) -> None:
    """Write ``data`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def model_label(path: Path) -> str:
    """``{run name}/{file stem}`` for a model saved in a run directory or its ``checkpoints/``."""
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return f"{run.name}/{path.stem}"


def fresh_minigrid_agent(
    policy: str, env_id: str, seed: int, overrides: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """An untrained agent as the training core builds it (one env, CPU), and its ``env_kwargs``."""
    config = make_config(env_id, policy=policy, seed=seed, overrides=overrides, n_envs=1)
    env_kwargs = dict(config.hyperparams.get("env_kwargs") or {})
    algorithm, name, kwargs = build_algorithm_kwargs(config)
    return algorithm(name, make_minigrid(env_id, **env_kwargs), seed=seed, device="cpu", **kwargs), env_kwargs


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    return statistics.fmean(values), t_half_width(values) or 0.0


def report(
    rows: list[dict[str, Any]], columns: list[str], titles: list[str], unit: str, json_path: Path | None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Group ``rows`` by ``env``, then ``policy``; print the table; write ``{"rows", "summary"}``.

    :param rows: one dict per run with ``env``, ``policy``, ``steps`` and every column
    :param columns: the row keys summarised, in table order
    :param titles: their column titles
    :param unit: what the means are of, for the table's footnote (e.g. ``"mean return"``)
    :param json_path: where to write the rows and the summary; None skips it
    :return: per task, per policy: ``seeds``, ``steps`` (the fewest of its runs) and
        (mean, half-width) per column
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for env in sorted({row["env"] for row in rows}):
        summary[env] = {}
        for policy in sorted({row["policy"] for row in rows if row["env"] == env}):
            mine = [row for row in rows if row["env"] == env and row["policy"] == policy]
            cells: dict[str, Any] = {"seeds": len(mine), "steps": min(row["steps"] for row in mine)}
            for column in columns:
                cells[column] = interval([row[column] for row in mine])
            summary[env][policy] = cells
    print("| task | policy | seeds | steps | " + " | ".join(titles) + " |")
    print("|---|---|---|---|" + "---|" * len(titles))
    for env, policies in summary.items():
        for policy, cells in policies.items():
            values = " | ".join(f"{cells[c][0]:.2f} ± {cells[c][1]:.2f}" for c in columns)
            print(f"| {env} | {policy} | {cells['seeds']} | {cells['steps']:,} | {values} |")
    print(f"({unit} over seeds ± half-width of the 95% t-interval; one seed: no interval)")
    if json_path is not None:
        write_json({"rows": rows, "summary": summary}, json_path)
    return summary
