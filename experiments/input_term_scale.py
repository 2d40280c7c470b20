"""How hard the input drives the gates at initialisation: nn.LSTM against RIM units.

    .venv/bin/python experiments/input_term_scale.py

For POPGym RepeatFirst's 5 input features (4 suits one-hot and the first-step flag), the
standard deviation of the input-to-gate term over the four one-suit observations, at
PyTorch's default initialisation, averaged over initialisation seeds:

- ``nn.LSTM(5, 256)``: ``x @ W_ih.T``;
- a RIM unit of 256: ``x @ W_value @ W_ih``, with the default value size (4 * 256) and 16;
- the full RIM of the RepeatFirst study (4 units of 64, value size 256), before the input
  attention's weight (about sigmoid(0) = 0.5 at initialisation) multiplies it.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from rim_agents.nn import RIM


def rim_input_term(x: torch.Tensor, rim: RIM) -> float:
    """Standard deviation of ``x @ W_value @ W_ih`` over the units of the first layer."""
    cell = rim.layers[0]
    return float((x @ cell.input_attention.value_weight @ cell.weight_ih).std())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="initialisation seeds to average over")
    args = parser.parse_args(argv)
    x = torch.zeros(4, 5)
    x[torch.arange(4), torch.arange(4)] = 1.0  # one suit each, not the first step
    rows: dict[str, list[float]] = {}
    torch.set_grad_enabled(False)
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        rows.setdefault("nn.LSTM(5, 256)", []).append(float((x @ torch.nn.LSTM(5, 256).weight_ih_l0.T).std()))
        for value_size in (1024, 16):
            torch.manual_seed(seed)
            unit = RIM(5, num_units=1, unit_size=256, top_k=1, communicate=False, input_value_size=value_size)
            rows.setdefault(f"RIM unit of 256, value size {value_size}", []).append(rim_input_term(x, unit))
        torch.manual_seed(seed)
        rows.setdefault("RIM 4 x 64, value size 256", []).append(rim_input_term(x, RIM(5, 4, 64, 3)))
    lstm = float(np.mean(rows["nn.LSTM(5, 256)"]))
    print("| input-to-gate term | std at initialisation | / nn.LSTM's |\n|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {np.mean(values):.3f} | {np.mean(values) / lstm:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
