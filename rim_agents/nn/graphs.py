"""CUDA graphs of a RIM's no-grad calls: one recorded graph per call signature, replayed.

On a GPU a rollout step of a small RIM is launch-bound: some hundred small kernels per
environment step, each costing more to launch than to run. A CUDA graph records them once
and replays them with one launch. ``RIM(cuda_graphs=True)`` routes its no-grad CUDA calls
here; everything else (autograd, CPU, training-mode dropout) runs as before.

What a replay reads: the call's inputs are copied into the graph's own input tensors, and the
parameters are read where they live, so in-place updates (optimizer steps,
``load_state_dict``) reach the next replay. A new parameter tensor (``.to()``, a replaced
Parameter) or a new input shape, dtype or device records a new graph. Outputs are copied out
of the graph's memory before they are returned, so a later replay never changes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

Run = Callable[..., tuple[Tensor, ...]]
# Calls run eagerly on a side stream before recording: the first calls of a new shape
# allocate and pick kernels (cuBLAS workspaces), which must not happen inside the capture.
WARMUP_CALLS = 2


class Recorded(NamedTuple):
    graph: torch.cuda.CUDAGraph
    inputs: tuple[Tensor | None, ...]
    outputs: tuple[Tensor, ...]


class CudaGraphs:
    """The recorded graphs of one module, keyed by what a recording depends on.

    Copies (``copy.deepcopy``, pickling) start empty: a graph belongs to the tensors it was
    recorded on.
    """

    def __init__(self) -> None:
        self._graphs: dict[tuple, Recorded] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def __deepcopy__(self, memo: dict) -> CudaGraphs:
        return CudaGraphs()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._graphs = {}

    def clear(self) -> None:
        """Forget every recorded graph (its memory returns to PyTorch's caching allocator)."""
        self._graphs.clear()

    def __call__(
        self, run: Run, inputs: Sequence[Tensor | None], parameters: Sequence[Tensor]
    ) -> tuple[Tensor, ...]:
        """``run(*inputs)``, replayed from the graph recorded for these inputs and parameters.

        :param run: a function of tensors (``None`` inputs are passed as they are) that reads
            ``parameters`` and returns a tuple of tensors; it must not synchronise with the host.
        :param inputs: the call's inputs; their shapes, dtypes and devices are part of the key.
        :param parameters: the tensors ``run`` reads besides its inputs; their addresses are
            part of the key.
        """
        key = (
            tuple(None if x is None else (tuple(x.shape), x.dtype, x.device) for x in inputs),
            tuple(p.data_ptr() for p in parameters),
        )
        recorded = self._graphs.get(key)
        if recorded is None:
            recorded = self._graphs[key] = _record(run, inputs)
        for static, x in zip(recorded.inputs, inputs, strict=True):
            if static is not None and x is not None:  # None in one means None in both: same key
                static.copy_(x)
        recorded.graph.replay()
        return tuple(out.clone() for out in recorded.outputs)


def _record(run: Run, inputs: Sequence[Tensor | None]) -> Recorded:
    """Warm ``run`` up on a side stream, then record one call of it into a new graph."""
    static_inputs = tuple(None if x is None else x.detach().clone() for x in inputs)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_CALLS):
            run(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outputs = run(*static_inputs)
    return Recorded(graph, static_inputs, tuple(static_outputs))
