"""RIM vs torch.nn.LSTM speed, measured side by side in one process.

Reproduce (CPU):  OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_rim.py
          (GPU):  .venv/bin/python bench/bench_rim.py --device cuda

Three shapes:
  paper     forward+backward of a whole sequence, N=64, L=100, D=32, 6 units x 100, k=4
            (the copying-task size of the paper's Table 1) against nn.LSTM(32, 600) and a
            Python loop of nn.LSTMCell(32, 600);
  rollout   one RecurrentPPO rollout step, N=8, L=1, D=64, inference (no_grad);
  train     one RecurrentPPO training batch, N=32 sequences, L=128, D=64, forward+backward,
            with episode resets inside the sequences. nn.LSTM cannot reset inside one call:
            sb3-contrib then loops over steps (``lstm-loop``); ``lstm-noreset`` is one
            nn.LSTM call that ignores the resets, a lower bound no reset-aware LSTM beats.

Each case also times the RIM with ``comm_read="linear"`` (the paper's plain residual read)
beside the default gated read, to show what bounding the state costs.

Every variant runs once to warm up, then the variants are timed in turns (interleaved,
so machine noise hits all alike) and the median of ``--repeats`` runs is reported, with
the ratio to nn.LSTM. Ratios, not absolute times, are what carry across machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from rim_agents.nn import RIM

Case = Callable[[], None]
CASES = ["paper", "rollout", "train"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lstm_cell_loop(cell: nn.LSTMCell, x: torch.Tensor) -> torch.Tensor:
    h = c = x.new_zeros(x.shape[1], cell.hidden_size)
    outputs = []
    for x_t in x:
        h, c = cell(x_t, (h, c))
        outputs.append(h)
    return torch.stack(outputs)


def lstm_reset_loop(lstm: nn.LSTM, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """sb3-contrib's ``_process_sequence`` when a batch holds episode starts: one call per step."""
    h = c = x.new_zeros(1, x.shape[1], lstm.hidden_size)
    outputs = []
    for x_t, start in zip(x, starts, strict=True):
        keep = (1.0 - start).view(1, -1, 1)
        out, (h, c) = lstm(x_t.unsqueeze(0), (h * keep, c * keep))
        outputs.append(out)
    return torch.cat(outputs)


def backward_case(forward: Callable[[], torch.Tensor], params: list[torch.Tensor]) -> Case:
    def run() -> None:
        for p in params:
            p.grad = None
        forward().sum().backward()

    return run


def inference_case(forward: Callable[[], torch.Tensor], steps: int) -> Case:
    def run() -> None:
        with torch.no_grad():
            for _ in range(steps):
                forward()

    return run


def measure(cases: dict[str, Case], repeats: int, device: torch.device) -> dict[str, float]:
    for run in cases.values():
        run()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], baseline: str, unit: str) -> None:
    print(f"\n## {title}")
    print(f"| variant | median {unit} | ratio to {baseline} |")
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.1f} ms | {seconds / medians[baseline]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--cases", nargs="+", default=["paper", "rollout", "train"], choices=["paper", "rollout", "train"]
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    omp = os.environ.get("OMP_WAIT_POLICY", "unset")
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {device}, {threads} threads, OMP_WAIT_POLICY={omp}, {cpu}")
    print("command: OMP_WAIT_POLICY=PASSIVE python " + " ".join(sys.argv))

    if "paper" in args.cases:
        x = torch.randn(100, 64, 32, device=device)
        rim = RIM(32, num_units=6, unit_size=100, top_k=4).to(device)
        linear = RIM(32, num_units=6, unit_size=100, top_k=4, comm_read="linear").to(device)
        lstm = nn.LSTM(32, 600).to(device)
        cell = nn.LSTMCell(32, 600).to(device)
        cases = {
            "nn.LSTM": backward_case(lambda: lstm(x)[0], list(lstm.parameters())),
            "RIM": backward_case(lambda: rim(x)[0], list(rim.parameters())),
            "RIM, linear read": backward_case(lambda: linear(x)[0], list(linear.parameters())),
            "nn.LSTMCell loop": backward_case(lambda: lstm_cell_loop(cell, x), list(cell.parameters())),
        }
        title = "paper size: forward+backward, N=64 L=100 D=32, 6x100 k=4 vs 600"
        report(title, measure(cases, args.repeats, device), "nn.LSTM", "per sequence batch")

    if "rollout" in args.cases:
        steps = 100
        x = torch.randn(1, 8, 64, device=device)
        rim = RIM(64, num_units=6, unit_size=100, top_k=4).to(device).eval()
        linear = RIM(64, num_units=6, unit_size=100, top_k=4, comm_read="linear").to(device).eval()
        lstm = nn.LSTM(64, 600).to(device).eval()
        rim_state = (torch.zeros(1, 8, 600, device=device),) * 2
        cases = {
            "nn.LSTM": inference_case(lambda: lstm(x, rim_state)[0], steps),
            "RIM": inference_case(lambda: rim(x, rim_state)[0], steps),
            "RIM, linear read": inference_case(lambda: linear(x, rim_state)[0], steps),
        }
        title = f"rollout step: inference, N=8 L=1 D=64 ({steps} steps per run)"
        report(title, measure(cases, args.repeats, device), "nn.LSTM", f"per {steps} steps")

    if "train" in args.cases:
        x = torch.randn(128, 32, 64, device=device)
        starts = (torch.rand(128, 32, device=device) < 0.02).float()
        rim = RIM(64, num_units=6, unit_size=100, top_k=4).to(device)
        linear = RIM(64, num_units=6, unit_size=100, top_k=4, comm_read="linear").to(device)
        lstm = nn.LSTM(64, 600).to(device)
        cases = {
            "lstm-noreset": backward_case(lambda: lstm(x)[0], list(lstm.parameters())),
            "RIM": backward_case(lambda: rim(x, episode_starts=starts)[0], list(rim.parameters())),
            "RIM, linear read": backward_case(
                lambda: linear(x, episode_starts=starts)[0], list(linear.parameters())
            ),
            "lstm-loop": backward_case(lambda: lstm_reset_loop(lstm, x, starts), list(lstm.parameters())),
        }
        title = f"training batch: forward+backward, N=32 L=128 D=64, {int(starts.sum())} resets"
        report(title, measure(cases, args.repeats, device), "lstm-noreset", "per batch")


if __name__ == "__main__":
    main()
