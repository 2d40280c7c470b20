"""RIM vs torch.nn.LSTM speed, measured side by side in one process.

Reproduce (CPU):  OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_rim.py --threads 1
                  OMP_WAIT_POLICY=PASSIVE .venv/bin/python bench/bench_rim.py --threads 2
          (GPU):  .venv/bin/python bench/bench_rim.py --device cuda

Cases (the RL sizes are the project YAML's MiniGrid RIM, 4 units x 32, k=2):
  paper       forward+backward of a whole sequence, N=64, L=100, D=32, 6 units x 100, k=4
              (the copying-task size of the paper's Table 1) against nn.LSTM(32, 600) and a
              Python loop of nn.LSTMCell(32, 600);
  rl-train    an RL training batch, N=16 sequences, L=64, D=64, 4x32 k=2, forward+backward
              with episode resets inside the sequences, against nn.LSTM(64, 128) run over
              the batch without resets (``lstm-loop``: the per-step loop sb3-contrib needs
              to honour them);
  rl-rollout  one rollout step, N=16, L=1, D=64, 4x32 k=2, inference, vs nn.LSTM(64, 128);
  rollout     one rollout step of the paper-size RIM, N=8, L=1, D=64, vs nn.LSTM(64, 600);
  train       a long training batch of the paper-size RIM, N=32, L=128, D=64, with resets;
  threads     the native op's forward+backward at several sizes, at --threads against one
              thread (the op splits units across threads above a size; see docs/native.md);
  atari       the Atari YAML's RIM (GRU units, 6 x 85, k=4, D=512 NatureCNN features) against
              nn.GRU(512, 510): a PPO minibatch of 256 steps forward+backward, as lanes x steps
              (2 x 128 is RimPPO's layout for 8 envs x 128 steps without max_lane_length, the
              shorter lanes are what max_lane_length gives), and a rollout step of 8 envs.

Each case times the RIM on its default backend (``RIM``: the native op on CPU where it
builds), on the PyTorch path (``RIM, torch``), and with the paper's linear communication
read (``RIM, linear read``). On CUDA two more rows show what CUDA graphs save: the rollout
cases add ``RIM, CUDA graphs`` (``RIM(cuda_graphs=True)``: no-grad calls replayed from a
recorded graph), and the training cases add ``RIM, graphed fwd+bwd``, the whole forward and
backward recorded with ``torch.cuda.make_graphed_callables`` (fixed shapes; not a RIM option).
Every variant runs once to warm up, then the variants are timed in turns (interleaved, so
machine noise hits all alike) and the median of ``--repeats`` runs is reported with the
ratio to nn.LSTM. The last table compares the default RIM's ratios with the targets of the
fused-operator issue. Ratios, not absolute times, are what carry across machines.
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

from rim_agents.nn import RIM, native
from rim_agents.threads import torch_threads

Case = Callable[[], None]
CASES = ["paper", "rl-train", "rl-rollout", "rollout", "train", "threads", "atari"]
# (lanes, steps) layouts of the atari case's 256-step minibatch.
ATARI_LANES = [(2, 128), (4, 64), (8, 32), (16, 16), (32, 8)]
# (L, N, K, H, k) of the threads case: the RL training shape up to the paper size.
THREAD_SHAPES = [
    (64, 16, 4, 32, 2),
    (64, 16, 6, 64, 4),
    (64, 32, 4, 64, 2),
    (32, 8, 6, 100, 4),
    (100, 64, 6, 100, 4),
]
# (row name, backend, communication read) of the RIM variants timed in every case.
VARIANTS = [
    ("RIM", "auto", "gated"),
    ("RIM, torch", "torch", "gated"),
    ("RIM, linear read", "auto", "linear"),
]
# Ratio of the default RIM to nn.LSTM: (must, goal), from the fused-operator issue.
TARGETS = {"rl-train": (2.0, 1.0), "rl-rollout": (1.5, 1.0), "paper": (1.0, 0.8)}


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


def report(title: str, medians: dict[str, float], baseline: str, unit: str) -> float:
    """Print the table of one case; return the default RIM's ratio to ``baseline``."""
    print(f"\n## {title}")
    print(f"| variant | median {unit} | ratio to {baseline} |")
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.1f} ms | {seconds / medians[baseline]:.2f} |")
    return medians["RIM"] / medians[baseline]


def rim(input_size: int, size: tuple[int, int, int], device: torch.device, backend: str, **kwargs) -> RIM:
    units, unit_size, top_k = size
    return RIM(input_size, num_units=units, unit_size=unit_size, top_k=top_k, backend=backend, **kwargs).to(
        device
    )


class _Output(nn.Module):
    """``x -> output`` of a RIM over fixed episode starts: the one-tensor module that
    ``torch.cuda.make_graphed_callables`` records (it finds the parameters through it)."""

    def __init__(self, module: RIM, starts: torch.Tensor | None) -> None:
        super().__init__()
        self.module = module
        self.starts = starts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, episode_starts=self.starts)[0]


def training_cases(
    size: tuple[int, int, int],
    lstm: nn.LSTM,
    x: torch.Tensor,
    starts: torch.Tensor | None,
    device: torch.device,
) -> dict[str, Case]:
    """Forward+backward of the RIM on each backend (and with the linear read) beside nn.LSTM."""
    kwargs = {} if starts is None else {"episode_starts": starts}
    cases = {"nn.LSTM": backward_case(lambda: lstm(x)[0], list(lstm.parameters()))}
    for name, backend, read in VARIANTS:
        module = rim(x.shape[-1], size, device, backend, comm_read=read)
        cases[name] = backward_case(lambda m=module: m(x, **kwargs)[0], list(module.parameters()))
    if device.type == "cuda":
        module = rim(x.shape[-1], size, device, "auto")
        graphed = torch.cuda.make_graphed_callables(_Output(module, starts), (x,))
        cases["RIM, graphed fwd+bwd"] = backward_case(lambda: graphed(x), list(module.parameters()))
    return cases


def rollout_cases(
    size: tuple[int, int, int], lstm: nn.LSTM, x: torch.Tensor, steps: int, device: torch.device
) -> dict[str, Case]:
    """``steps`` inference calls of one step each, carrying no state (the cost per call)."""
    batch, hidden = x.shape[1], lstm.hidden_size
    state = (torch.zeros(1, batch, hidden, device=device),) * 2
    cases = {"nn.LSTM": inference_case(lambda: lstm(x, state)[0], steps)}
    for name, backend, read in VARIANTS:
        module = rim(x.shape[-1], size, device, backend, comm_read=read).eval()
        cases[name] = inference_case(lambda m=module: m(x, state)[0], steps)
    if device.type == "cuda":
        module = rim(x.shape[-1], size, device, "auto", cuda_graphs=True).eval()
        cases["RIM, CUDA graphs"] = inference_case(lambda: module(x, state)[0], steps)
    return cases


def threads_case(threads: int, repeats: int, device: torch.device) -> None:
    """The default RIM's forward+backward at ``threads`` threads against one, per size."""
    if threads == 1 or device.type != "cpu":
        print("\n## threads: skipped (needs --threads 2 or more, on the CPU)")
        return
    print(f"\n## native op, forward+backward at {threads} threads vs 1 (no resets, D=64)")
    print("| L, N, K x H, k | L*N*K*H*H | 1 thread | ratio |")
    print("|---|---|---|---|")
    for seq_len, batch, units, unit_size, top_k in THREAD_SHAPES:
        module = rim(64, (units, unit_size, top_k), device, "auto")
        x = torch.randn(seq_len, batch, 64, device=device)
        run = backward_case(lambda m=module, x=x: m(x)[0], list(module.parameters()))

        def at(count: int, run: Case = run) -> Case:
            def timed() -> None:
                with torch_threads(count):
                    run()

            return timed

        medians = measure({"1": at(1), "n": at(threads)}, repeats, device)
        work = seq_len * batch * units * unit_size**2
        shape = f"{seq_len}, {batch}, {units} x {unit_size}, {top_k}"
        ratio = medians["n"] / medians["1"]
        print(f"| {shape} | {work / 2**22:.1f} x 2^22 | {medians['1'] * 1e3:.1f} ms | {ratio:.2f} |")


def atari_case(repeats: int, device: torch.device) -> None:
    """The Atari RIM and nn.GRU of the same hidden size at each minibatch layout, and a rollout step."""
    size, gru = (6, 85, 4), nn.GRU(512, 510).to(device)
    print("\n## Atari RIM (GRU 6 x 85, k=4, D=512) vs nn.GRU(512, 510): 256 steps, forward+backward")
    print("| lanes x steps | RIM | nn.GRU | ratio |")
    print("|---|---|---|---|")
    module = rim(512, size, device, "auto", cell="gru")
    for lanes, steps in ATARI_LANES:
        x = torch.randn(steps, lanes, 512, device=device)
        cases = {
            "nn.GRU": backward_case(lambda x=x: gru(x)[0], list(gru.parameters())),
            "RIM": backward_case(lambda x=x: module(x)[0], list(module.parameters())),
        }
        medians = measure(cases, repeats, device)
        rim_ms, gru_ms = medians["RIM"] * 1e3, medians["nn.GRU"] * 1e3
        print(f"| {lanes} x {steps} | {rim_ms:.1f} ms | {gru_ms:.1f} ms | {rim_ms / gru_ms:.2f} |")
    steps, x = 100, torch.randn(1, 8, 512, device=device)
    module.eval()
    h = torch.zeros(1, 8, 510, device=device)
    cases = {
        "nn.GRU": inference_case(lambda: gru(x, h)[0], steps),
        "RIM": inference_case(lambda: module(x, (h, h))[0], steps),
    }
    report(
        f"Atari rollout step: inference, N=8 L=1 D=512, GRU 6x85 k=4 ({steps} steps per run)",
        measure(cases, repeats, device),
        "nn.GRU",
        f"per {steps} steps",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    omp = os.environ.get("OMP_WAIT_POLICY", "unset")
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {device}, {threads} threads, OMP_WAIT_POLICY={omp}, {cpu}")
    cap = os.environ.get(native.SIMD_VARIABLE)
    prefix = f"{native.SIMD_VARIABLE}={cap} " if cap else ""
    print(f"command: {prefix}OMP_WAIT_POLICY=PASSIVE python " + " ".join(sys.argv))
    if device.type == "cpu" and native.load() is None:
        print(f"native op unavailable ({native.unavailable_reason()}): the native rows run the PyTorch path")
    elif device.type == "cpu":
        level = native.simd_level()
        matmuls = "the BLAS" if level == "none" else "the op's own kernel"
        print(f"native op built for {level} vectors (float32 matmuls: {matmuls})")
    ratios: dict[str, float] = {}

    if "paper" in args.cases:
        x = torch.randn(100, 64, 32, device=device)
        cases = training_cases((6, 100, 4), nn.LSTM(32, 600).to(device), x, None, device)
        cell = nn.LSTMCell(32, 600).to(device)
        cases["nn.LSTMCell loop"] = backward_case(lambda: lstm_cell_loop(cell, x), list(cell.parameters()))
        title = "paper size: forward+backward, N=64 L=100 D=32, 6x100 k=4 vs nn.LSTM(32, 600)"
        ratios["paper"] = report(title, measure(cases, args.repeats, device), "nn.LSTM", "per sequence batch")

    if "rl-train" in args.cases:
        x = torch.randn(64, 16, 64, device=device)
        starts = (torch.rand(64, 16, device=device) < 0.05).float()
        lstm = nn.LSTM(64, 128).to(device)
        cases = training_cases((4, 32, 2), lstm, x, starts, device)
        cases["lstm-loop"] = backward_case(lambda: lstm_reset_loop(lstm, x, starts), list(lstm.parameters()))
        title = f"RL training shape: forward+backward, N=16 L=64 D=64, 4x32 k=2, {int(starts.sum())} resets"
        ratios["rl-train"] = report(title, measure(cases, args.repeats, device), "nn.LSTM", "per batch")

    if "rl-rollout" in args.cases:
        steps = 100
        x = torch.randn(1, 16, 64, device=device)
        cases = rollout_cases((4, 32, 2), nn.LSTM(64, 128).to(device).eval(), x, steps, device)
        title = f"RL rollout step: inference, N=16 L=1 D=64, 4x32 k=2 ({steps} steps per run)"
        ratios["rl-rollout"] = report(
            title, measure(cases, args.repeats, device), "nn.LSTM", f"per {steps} steps"
        )

    if "rollout" in args.cases:
        steps = 100
        x = torch.randn(1, 8, 64, device=device)
        cases = rollout_cases((6, 100, 4), nn.LSTM(64, 600).to(device).eval(), x, steps, device)
        title = f"rollout step, paper-size RIM: inference, N=8 L=1 D=64, 6x100 k=4 ({steps} steps per run)"
        ratios["rollout"] = report(
            title, measure(cases, args.repeats, device), "nn.LSTM", f"per {steps} steps"
        )

    if "train" in args.cases:
        x = torch.randn(128, 32, 64, device=device)
        starts = (torch.rand(128, 32, device=device) < 0.02).float()
        lstm = nn.LSTM(64, 600).to(device)
        cases = training_cases((6, 100, 4), lstm, x, starts, device)
        cases["lstm-loop"] = backward_case(lambda: lstm_reset_loop(lstm, x, starts), list(lstm.parameters()))
        title = (
            f"training batch, paper-size RIM: forward+backward, N=32 L=128 D=64, {int(starts.sum())} resets"
        )
        ratios["train"] = report(title, measure(cases, args.repeats, device), "nn.LSTM", "per batch")

    if "threads" in args.cases:
        threads_case(threads, args.repeats, device)

    if "atari" in args.cases:
        atari_case(args.repeats, device)

    print("\n## targets (issue: fused RIM operator), RIM default backend / nn.LSTM")
    print("| case | ratio | must | goal | must holds |")
    print("|---|---|---|---|---|")
    for case, ratio in ratios.items():
        if case in TARGETS:
            must, goal = TARGETS[case]
            print(f"| {case} | {ratio:.2f} | <= {must} | <= {goal} | {'yes' if ratio <= must else 'NO'} |")


if __name__ == "__main__":
    main()
