"""How large Adam's per-weight step scale is in saved models: quantiles of the square root of
its second moment (``exp_avg_sq``) over all weights, and the median of its first moment.

    .venv/bin/python experiments/optimizer_state.py \\
        runs/memory_tmaze_s7_rim_constant_lr/0002__*/checkpoints/rl_model_{100352,200704}_steps.zip

Reads ``policy.optimizer.pth`` from each SB3 ``.zip`` (saved with every model and
checkpoint). Adam steps a weight by ``lr * m / (sqrt(v) + eps)``, so where ``sqrt(v)`` is
below ``eps`` the step is capped by ``eps``; a ``sqrt(v)`` that shrinks over training would
let one large gradient take an outsized step.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from study_summary import model_label, write_json  # experiments/ is the script's folder, so on sys.path

QUANTILES = (0.1, 0.5, 0.9, 0.99)


def optimizer_summary(path: Path) -> dict[str, Any]:
    """Adam's step count, eps and the quantiles of sqrt(exp_avg_sq) over all weights of ``path``."""
    with zipfile.ZipFile(path) as archive:
        if "policy.optimizer.pth" not in archive.namelist():
            raise ValueError(f"{path} holds no policy.optimizer.pth: not a model saved by SB3")
        state = torch.load(io.BytesIO(archive.read("policy.optimizer.pth")), map_location="cpu")
    per_weight = list(state["state"].values())
    if not per_weight or "exp_avg_sq" not in per_weight[0]:
        raise ValueError(f"{path}: the optimizer has no Adam state (exp_avg_sq)")
    eps = float(state["param_groups"][0]["eps"])
    scale = torch.cat([entry["exp_avg_sq"].flatten() for entry in per_weight]).sqrt()
    first = torch.cat([entry["exp_avg"].flatten() for entry in per_weight]).abs()
    # torch.quantile takes at most 2^24 values; the policies here have far fewer weights.
    values = torch.quantile(scale[: 2**24].double(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {
        "model": model_label(path),
        "adam_steps": int(float(per_weight[0]["step"])),
        "eps": eps,
        "weights": int(scale.numel()),
        **{f"sqrt_v_q{int(q * 100)}": float(v) for q, v in zip(QUANTILES, values, strict=True)},
        "below_eps": float((scale < eps).double().mean()),
        "abs_m_median": float(first.median()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", type=Path, help="SB3 .zip files (models or checkpoints)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    try:
        rows = [optimizer_summary(path) for path in args.models]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("| model | Adam steps | sqrt(v) 10% | 50% | 90% | 99% | share below eps | median abs(m) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        quantiles = " | ".join(f"{row[f'sqrt_v_q{int(q * 100)}']:.1e}" for q in QUANTILES)
        rest = f"{row['below_eps']:.2f} | {row['abs_m_median']:.1e}"
        print(f"| {row['model']} | {row['adam_steps']} | {quantiles} | {rest} |")
    if args.json is not None:
        write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
