"""The per-policy table both study summaries print: mean over seeds with a 95% t-interval.

``memory_summary.py`` (MiniGrid success) and ``popgym_summary.py`` (POPGym returns) build one
row per run; this groups the rows by policy, prints the markdown table and writes the JSON.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from rim_agents.stats import t_half_width


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for a single value)."""
    return statistics.fmean(values), t_half_width(values) or 0.0


def report(
    rows: list[dict[str, Any]], columns: list[str], titles: list[str], unit: str, json_path: Path | None
) -> dict[str, dict[str, Any]]:
    """Group ``rows`` by policy, print the table, write ``{"rows", "summary"}`` to ``json_path``.

    :param rows: one dict per run with ``policy``, ``steps`` and every column
    :param columns: the row keys summarised, in table order
    :param titles: their column titles
    :param unit: what the means are of, for the table's footnote (e.g. ``"mean return"``)
    :param json_path: where to write the rows and the summary; None skips it
    :return: per policy: ``seeds``, ``steps`` (the fewest of its runs) and (mean, half-width) per column
    """
    summary: dict[str, dict[str, Any]] = {}
    for policy in sorted({row["policy"] for row in rows}):
        mine = [row for row in rows if row["policy"] == policy]
        summary[policy] = {"seeds": len(mine), "steps": min(row["steps"] for row in mine)}
        for column in columns:
            summary[policy][column] = interval([row[column] for row in mine])
    print("| policy | seeds | steps | " + " | ".join(titles) + " |")
    print("|---|---|---|" + "---|" * len(titles))
    for policy, cells in summary.items():
        values = " | ".join(f"{cells[c][0]:.2f} ± {cells[c][1]:.2f}" for c in columns)
        print(f"| {policy} | {cells['seeds']} | {cells['steps']:,} | {values} |")
    print(f"({unit} over seeds ± half-width of the 95% t-interval; one seed: no interval)")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    return summary
