"""Pool a memory study run in parts (the same grid, other seeds) and compare two policies.

Reads the ``rows`` of several ``experiments/memory_summary.py`` JSONs (one row per final
model, its success on each test task) and, per policy over all their seeds: success on each
task as mean ± the half-width of its 95% t-interval, and how many final models reach
``--solved`` (0.9) on it (on the training task: solved it; on a longer one: held the cue
that long), with a two-sided Fisher exact test of those counts between the two policies.

    .venv/bin/python experiments/memory_pool.py docs/results/memory_tmaze_s7.json \\
        docs/results/memory_tmaze_s7_more.json --policies rim lstm \\
        --json docs/results/memory_tmaze_s7_pooled.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from study_summary import interval, write_json  # experiments/ is the script's folder, so on sys.path

from rim_agents.stats import fisher_exact_p


def pool(rows: list[dict[str, Any]], policies: list[str], solved: float) -> dict[str, Any]:
    """Per task column: each policy's seeds, mean and half-width, count solved; the test's p."""
    tasks = sorted({key for row in rows for key in row if key.startswith("test_success/")})
    result: dict[str, Any] = {}
    for task in tasks:
        cells: dict[str, Any] = {}
        for policy in policies:
            values = [row[task] for row in rows if row["policy"] == policy]
            mean, half_width = interval(values)
            seeds = sorted(row["seed"] for row in rows if row["policy"] == policy)
            cells[policy] = {
                "seeds": seeds,
                "mean": mean,
                "half_width": half_width,
                "solved": sum(value >= solved for value in values),
                "runs": len(values),
            }
        a, b = (cells[policy] for policy in policies)
        cells["fisher_p"] = fisher_exact_p(a["solved"], a["runs"], b["solved"], b["runs"])
        result[task.removeprefix("test_success/")] = cells
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("summaries", nargs="+", type=Path, help="memory_summary.py JSONs to pool")
    parser.add_argument("--policies", nargs=2, default=["rim", "lstm"], help="the two policies compared")
    parser.add_argument("--solved", type=float, default=0.9, help="success that counts as solved")
    parser.add_argument("--json", type=Path, default=None, help="write the pooled table here")
    args = parser.parse_args(argv)
    rows = [row for path in args.summaries for row in json.loads(path.read_text())["rows"]]
    missing = [policy for policy in args.policies if not any(row["policy"] == policy for row in rows)]
    if missing:
        print(f"error: no rows of policy {missing} in {[str(p) for p in args.summaries]}", file=sys.stderr)
        return 2
    result = pool(rows, args.policies, args.solved)
    a, b = args.policies
    print(f"| task | {a} | {b} | {a} >= {args.solved} | {b} >= {args.solved} | Fisher p |")
    print("|---|---|---|---|---|---|")
    for task, cells in result.items():
        x, y = cells[a], cells[b]
        print(
            f"| {task} | {x['mean']:.2f} ± {x['half_width']:.2f} | {y['mean']:.2f} ± {y['half_width']:.2f} "
            f"| {x['solved']} of {x['runs']} | {y['solved']} of {y['runs']} | {cells['fisher_p']:.3f} |"
        )
    if args.json is not None:
        write_json(
            {"summaries": [str(p) for p in args.summaries], "solved": args.solved, "tasks": result}, args.json
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
