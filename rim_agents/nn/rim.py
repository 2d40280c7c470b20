"""RIM: a Recurrent Independent Mechanisms layer stack with the interface of ``nn.LSTM``.

Symbols:
    L - sequence length          K - units (``num_units``)
    N - batch                    H - unit size; the hidden size is K*H
    D - input features
"""

from __future__ import annotations

from numbers import Integral, Real

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from rim_agents.nn import native
from rim_agents.nn.attention import COMM_READS
from rim_agents.nn.cell import GATES, DropoutMasks, RIMCell, StepWeights
from rim_agents.nn.graphs import CudaGraphs

BACKENDS = ("auto", "native", "torch")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_probability(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


class RIM(nn.Module):
    r"""Recurrent Independent Mechanisms (Goyal et al., ICLR 2021, arXiv 1909.10893).

    A drop-in for :class:`torch.nn.LSTM`: the hidden vector of size ``K*H`` holds the
    ``K`` units' states side by side (unit ``i`` at ``[i*H, (i+1)*H)``). At every step
    each unit attends to the input and a zero "null" input; the ``top_k`` units that
    attend least to the null input are active: they update with their own LSTM or GRU
    weights, then read from all units through communication attention. Inactive units
    keep their h and c exactly; gradient flows through that carried state.

    Args:
        input_size: features of the input ``D``.
        num_units: number of units ``K`` (paper: 6).
        unit_size: hidden size of each unit ``H`` (paper: 100).
        top_k: active units per step, ``1..num_units`` (paper: 4). ``top_k == num_units``
            is the dense variant (every unit updates at every step).
        num_layers: stacked RIM layers; layer ``l+1`` reads layer ``l``'s output.
        cell: ``"lstm"`` or ``"gru"`` dynamics in each unit.
        input_key_size: input-attention key size per head (paper: 64).
        input_value_size: input-attention value size, the size of a unit's read;
            ``None`` means ``4 * unit_size`` (paper: 400).
        input_heads: input-attention heads; scores are averaged over heads (paper: 1).
        input_dropout: dropout on the input-attention weights (paper: 0.1).
        input_attention: ``False`` is an ablation, not the paper's model: every unit reads
            ``value(x_t)`` with weight 1 instead of ``sigmoid(score) * value(x_t)``, so no
            unit is ever switched off by the input. It needs ``top_k == num_units`` and runs
            on the PyTorch path (``backend="auto"`` uses it; ``"native"`` refuses). The
            query and key weights stay in the module (same ``state_dict`` keys) unused, and
            ``input_dropout`` drops a unit's whole read.
        comm_key_size: communication key size per head (paper: 32).
        comm_value_size: communication value size per head (paper: 32).
        comm_heads: communication heads (paper: 4).
        comm_dropout: dropout on the communication attention weights (paper: 0.1).
        communicate: ``False`` removes communication (the paper's ablation).
        comm_read: how an active unit adds its communication read. ``"gated"`` (default):
            ``sigmoid(gate) * tanh(read)``, as the official implementation does; it keeps
            an LSTM unit's h within [-2, 2]. ``"linear"``: the paper's equation, the read
            added as it is; states can grow without bound over long runs.
        dropout: dropout on the outputs of each layer except the last, as ``nn.LSTM``.
        batch_first: input and output are ``(N, L, *)`` instead of ``(L, N, *)``
            (states stay ``(num_layers, N, K*H)``, as in ``nn.LSTM``).
        backend: how each layer's time loop runs. ``"native"``: one C++ call per layer,
            forward and backward (``rim_agents/nn/csrc/rim_layer.cpp``, built on first use;
            CPU, float32/float64); a ValueError says why where it cannot run. ``"torch"``:
            PyTorch operations step by step (any device and dtype; the reference for the
            native op). ``"auto"`` (default): native where it can run, else torch; if the
            extension cannot be built it warns once and uses torch.
        cuda_graphs: ``True`` replays no-grad calls on CUDA from recorded CUDA graphs
            (:mod:`rim_agents.nn.graphs`), one per input shape: for rollouts, where a small
            RIM step is launch-bound. Results equal the eager calls'. Calls with autograd,
            on the CPU, or in training mode with attention dropout above 0 run eagerly.
        device: where the parameters are made, as ``nn.LSTM``'s factory argument (default: the CPU).
        dtype: the parameters' floating-point type, as ``nn.LSTM``'s factory argument
            (default: torch's default dtype).

    Inputs: input, hx, episode_starts
        - **input**: ``(L, N, D)``, or ``(L, D)`` for one unbatched sequence, of the
          parameters' dtype (a ValueError says how to convert otherwise).
        - **hx**: ``None`` (zeros) or ``(h_0, c_0)``, each ``(num_layers, N, K*H)``
          (``(num_layers, K*H)`` unbatched). A GRU ignores ``c_0``.
        - **episode_starts**: ``None`` or ``(L, N)`` (``(L,)`` unbatched; ``(N, L)`` with
          ``batch_first``); where it is 1 the state of that sample is zeroed just before
          that step, inside the one time loop.

    Outputs: output, (h_n, c_n)
        - **output**: ``(L, N, K*H)`` the last layer's hidden state at every step.
        - **h_n**, **c_n**: ``(num_layers, N, K*H)``; for a GRU ``c_n`` is zeros.

    Attention dropout (``input_dropout``, ``comm_dropout``) draws one mask per layer and
    call, before the time loop, and both backends apply the same masks.

    The arguments ``input_size``, ``num_layers``, ``num_units``, ``unit_size``, ``top_k``,
    ``cell``, ``comm_read``, ``input_attention``, ``backend`` and ``cuda_graphs`` are kept as
    attributes of the same name.

    Attributes:
        hidden_size: ``K*H``, as ``nn.LSTM``'s.
        last_active: ``(L, num_layers, N, K)`` booleans, which units were active at each
            step of the last forward call (``(L, num_layers, K)`` unbatched), or None
            before the first call. Recorded during the pass, no extra computation.
        layers: the :class:`RIMCell` of each layer.

    Examples::

        >>> rim = RIM(input_size=32, num_units=6, unit_size=100, top_k=4)
        >>> x = torch.randn(100, 64, 32)
        >>> output, (h_n, c_n) = rim(x)
        >>> output.shape, h_n.shape, rim.last_active.shape
        (torch.Size([100, 64, 600]), torch.Size([1, 64, 600]), torch.Size([100, 1, 64, 6]))
    """

    last_active: Tensor | None

    def __init__(
        self,
        input_size: int,
        num_units: int = 6,
        unit_size: int = 100,
        top_k: int = 4,
        num_layers: int = 1,
        cell: str = "lstm",
        input_key_size: int = 64,
        input_value_size: int | None = None,
        input_heads: int = 1,
        input_dropout: float = 0.1,
        input_attention: bool = True,
        comm_key_size: int = 32,
        comm_value_size: int = 32,
        comm_heads: int = 4,
        comm_dropout: float = 0.1,
        communicate: bool = True,
        comm_read: str = "gated",
        dropout: float = 0.0,
        batch_first: bool = False,
        backend: str = "auto",
        cuda_graphs: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        sizes = {
            "input_size": input_size,
            "num_units": num_units,
            "unit_size": unit_size,
            "num_layers": num_layers,
            "input_key_size": input_key_size,
            "input_heads": input_heads,
            "comm_key_size": comm_key_size,
            "comm_value_size": comm_value_size,
            "comm_heads": comm_heads,
        }
        for name, value in sizes.items():
            _check_positive_int(name, value)
        if input_value_size is None:
            input_value_size = 4 * unit_size
        _check_positive_int("input_value_size", input_value_size)
        _check_positive_int("top_k", top_k)
        if top_k > num_units:
            raise ValueError(f"top_k must be between 1 and num_units={num_units}, got {top_k}")
        if not isinstance(input_attention, bool):
            raise ValueError(f"input_attention must be True or False, got {input_attention!r}")
        if not input_attention and top_k != num_units:
            raise ValueError(
                f"input_attention=False lets every unit read the input, so top_k must equal "
                f"num_units={num_units}, got top_k={top_k}"
            )
        if backend == "native" and not input_attention:
            raise ValueError(
                "backend='native' cannot run input_attention=False (the native op always attends); "
                "use backend='auto' or 'torch'"
            )
        if cell not in GATES:
            raise ValueError(f"cell must be one of {sorted(GATES)}, got {cell!r}")
        if comm_read not in COMM_READS:
            raise ValueError(f"comm_read must be one of {list(COMM_READS)}, got {comm_read!r}")
        if not isinstance(cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        if backend == "native" and (reason := native.unavailable_reason()) is not None:
            raise ValueError(f"backend='native' cannot run here: {reason}; use backend='auto' or 'torch'")
        for name, probability in {
            "input_dropout": input_dropout,
            "comm_dropout": comm_dropout,
            "dropout": dropout,
        }.items():
            _check_probability(name, probability)
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(
                f"dtype must be a floating-point torch.dtype such as torch.float64, got {dtype!r}"
            )

        self.input_size = input_size
        self.num_units = num_units
        self.unit_size = unit_size
        self.hidden_size = num_units * unit_size
        self.top_k = top_k
        self.input_attention = input_attention
        self.num_layers = num_layers
        self.cell = cell
        self.comm_read = comm_read
        self.dropout = dropout
        self.batch_first = batch_first
        self.backend = backend
        self.cuda_graphs = cuda_graphs
        self._graphs = CudaGraphs()
        self.layers = nn.ModuleList(
            RIMCell(
                input_size if layer == 0 else self.hidden_size,
                num_units,
                unit_size,
                top_k,
                cell,
                input_key_size,
                input_value_size,
                input_heads,
                input_dropout,
                comm_key_size,
                comm_value_size,
                comm_heads,
                comm_dropout,
                communicate,
                comm_read,
                input_attention,
            )
            for layer in range(num_layers)
        )
        self.last_active = None
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, num_units={self.num_units}, unit_size={self.unit_size}, "
            f"top_k={self.top_k}, num_layers={self.num_layers}, cell={self.cell!r}, "
            f"comm_read={self.comm_read!r}, backend={self.backend!r}"
            + ("" if self.input_attention else ", input_attention=False")
            + (", cuda_graphs=True" if self.cuda_graphs else "")
        )

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._graphs.clear()  # recorded against the old tensors
        return super()._apply(fn, recurse)

    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        episode_starts: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """See the class docstring for shapes."""
        weight_dtype = self.layers[0].weight_hh.dtype
        if input.dtype != weight_dtype and not torch.is_autocast_enabled(input.device.type):
            convert = "input.float()" if weight_dtype == torch.float32 else f"input.to({weight_dtype})"
            raise ValueError(
                f"input has dtype {input.dtype}, but the RIM's parameters are {weight_dtype}: convert the "
                f"input ({convert})"
                + ("" if not input.is_floating_point() else f" or the module (rim.to({input.dtype}))")
            )
        if hx is not None and not (isinstance(hx, tuple | list) and len(hx) == 2):
            got = f"a tensor of shape {tuple(hx.shape)}" if isinstance(hx, Tensor) else type(hx).__name__
            raise TypeError(
                f"hx must be a tuple (h_0, c_0) of two tensors, as nn.LSTM takes (a GRU cell ignores "
                f"c_0), got {got}"
            )
        if input.dim() not in (2, 3):
            raise ValueError(
                f"input must be 3-D (L, N, input_size) or 2-D (L, input_size), got shape {tuple(input.shape)}"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"input must have input_size={self.input_size} features in its last dimension, "
                f"got shape {tuple(input.shape)}"
            )
        unbatched = input.dim() == 2
        batch = 1 if unbatched else input.shape[0 if self.batch_first else 1]
        expected = (
            (self.num_layers, self.hidden_size) if unbatched else (self.num_layers, batch, self.hidden_size)
        )
        if hx is not None:
            for name, state in zip(("h_0", "c_0"), hx, strict=True):
                if tuple(state.shape) != expected:
                    shape = "(num_layers, hidden_size)" if unbatched else "(num_layers, N, hidden_size)"
                    raise ValueError(f"{name} must have shape {shape}={expected}, got {tuple(state.shape)}")
        if unbatched:
            input = input.unsqueeze(1)
            hx = None if hx is None else (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
            episode_starts = None if episode_starts is None else episode_starts.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
            episode_starts = None if episode_starts is None else episode_starts.transpose(0, 1)
        seq_len = input.shape[0]
        if hx is None:
            zeros = input.new_zeros(self.num_layers, batch, self.hidden_size)
            hx = (zeros, zeros)
        keep = None
        if episode_starts is not None:
            if tuple(episode_starts.shape) != (seq_len, batch):
                got = tuple(episode_starts.shape)
                raise ValueError(f"episode_starts must have shape (L, N)={(seq_len, batch)}, got {got}")
            keep = 1.0 - episode_starts.to(input.dtype)

        if self._replays_graph(input):
            inputs = (input, hx[0], hx[1], keep)
            output, h_n, c_n, active = self._graphs(self._run_fresh, inputs, list(self.parameters()))
        else:
            output, h_n, c_n, active = self._run(input, hx, keep)
        self.last_active = active.squeeze(2) if unbatched else active
        if unbatched:
            return output.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _replays_graph(self, x: Tensor) -> bool:
        """Whether this call replays a CUDA graph (see ``cuda_graphs``)."""
        if not (self.cuda_graphs and x.is_cuda) or torch.is_grad_enabled():
            return False
        if torch.cuda.is_current_stream_capturing():  # the caller records a graph of its own
            return False
        cell: RIMCell
        for cell in self.layers:  # type: ignore[assignment]
            comm = 0.0 if cell.communication is None else cell.communication.dropout
            if self.training and max(cell.input_attention.dropout, comm, self.dropout) > 0:
                return False
        return True

    def _run_fresh(
        self, x: Tensor, h: Tensor, c: Tensor, keep: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`_run` reading the parameters themselves, for a recorded graph to replay."""
        return self._run(x, (h, c), keep, cached_weights=False)

    def _uses_native(self, x: Tensor) -> bool:
        """Whether this call runs natively; ValueError for ``backend="native"`` where it cannot."""
        if self.backend == "torch" or not self.input_attention:
            return False
        reason = native.unsupported_reason(x)
        if self.backend == "native":
            if reason is not None:
                raise ValueError(f"backend='native' cannot run this call: {reason}; use backend='auto'")
            return True
        return reason is None and native.load() is not None

    def _run(
        self, x: Tensor, hx: tuple[Tensor, Tensor], keep: Tensor | None, cached_weights: bool = True
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Layers by time. ``x (L, N, D)``, ``hx`` each ``(num_layers, N, K*H)``,
        ``keep (L, N)`` or None -> output, h_n, c_n, active ``(L, layers, N, K)``.

        ``cached_weights=False`` builds the per-call weight layouts from the parameters
        even without autograd (a recorded graph must read the parameters, not a cache)."""
        run_layer = _native_layer if self._uses_native(x) else _torch_layer
        seq_len, batch = x.shape[:2]
        h_out, c_out, masks = [], [], []
        layer: RIMCell
        for index, layer in enumerate(self.layers):  # type: ignore[assignment]
            if index > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            dropout = layer.dropout_masks(seq_len, batch, x) if self.training else DropoutMasks(None, None)
            # Plain view/permute rather than einops in this per-call path: a rollout calls
            # it once per environment step, where each einops call costs microseconds.
            h = hx[0][index].view(batch, self.num_units, self.unit_size).transpose(0, 1)  # n (k h) -> k n h
            c = hx[1][index].view(batch, self.num_units, self.unit_size).transpose(0, 1)
            if self.cell == "gru":
                c = torch.zeros_like(h)
            composed: Tensor | None = None
            if torch.is_grad_enabled() or not cached_weights:
                weights = layer.step_weights()
            else:  # rollouts: the same weights step after step
                composed, weights = layer.inference_weights()
            x, h, c, active = run_layer(layer, x, composed, weights, h, c, keep, dropout)
            h_out.append(h.transpose(0, 1).reshape(batch, self.hidden_size))  # k n h -> n (k h)
            c_out.append(c.transpose(0, 1).reshape(batch, self.hidden_size))
            masks.append(active)
        active = torch.stack(masks).permute(1, 0, 3, 2)  # layers l k n -> l layers n k
        return x, torch.stack(h_out), torch.stack(c_out), active


def _torch_layer(
    layer: RIMCell,
    x: Tensor,
    composed: Tensor | None,
    weights: StepWeights,
    h: Tensor,
    c: Tensor,
    keep: Tensor | None,
    dropout: DropoutMasks,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer, step by step in PyTorch operations.

    ``x (L, N, D)``; ``composed``: the layer's cached :meth:`RIMCell.composed_input_weight`
    or None; ``h``, ``c`` ``(K, N, H)``; ``keep (L, N)`` or None -> ``output (L, N, K*H)``,
    ``h_n``, ``c_n`` ``(K, N, H)``, ``active (L, K, N)``.
    """
    prepared = layer.prepare(x, composed)
    seq_len, batch = prepared.keys.shape[:2]
    # Per-step views, no copy: unbinding once keeps autograd from building a full-size
    # zero gradient per step as slicing would.
    keys = prepared.keys.unbind(0)
    gates = rearrange(prepared.gates, "l n k g -> l k n g").unbind(0)
    # (L, N) -> (L, 1, N, 1): broadcasts over the unit-major state (K, N, H).
    keep_steps = None if keep is None else keep.view(seq_len, 1, batch, 1)
    no_masks: list[Tensor | None] = [None] * seq_len
    input_masks = no_masks if dropout.input is None else dropout.input.unbind(0)
    comm_masks = no_masks if dropout.communication is None else dropout.communication.unbind(0)
    outputs, actives = [], []
    for t in range(seq_len):
        if keep_steps is not None:
            h = h * keep_steps[t]
            if layer.cell == "lstm":  # a GRU's c stays zero
                c = c * keep_steps[t]
        h, c, active = layer.step(keys[t], gates[t], h, c, weights, input_masks[t], comm_masks[t])
        outputs.append(h)
        actives.append(active)
    output = rearrange(torch.stack(outputs), "l k n h -> l n (k h)")
    return output, h, c, torch.stack(actives)


def composing_pays(layer: RIMCell, samples: int) -> bool:
    """Whether a training call over ``samples = L*N`` rows should form ``W_v @ W_ih`` first.

    Multiply-adds per call: composed, ``D*V*K*G`` once plus ``top_k*D*G`` per row (the active
    units' input terms); values first, ``D*V + top_k*V*G`` per row. Backward scales both
    alike. At the Atari shape (D 512, V 340, K 6, G 255, k 4) the per-row costs tie and
    composing never pays; it pays for wide values over narrow inputs and long calls."""
    d, v = layer.input_attention.value_weight.shape
    k, _, g = layer.weight_ih.shape
    saved_per_row = d * v + layer.top_k * v * g - layer.top_k * d * g
    return samples * saved_per_row > d * v * k * g


def _native_layer(
    layer: RIMCell,
    x: Tensor,
    composed: Tensor | None,
    weights: StepWeights,
    h: Tensor,
    c: Tensor,
    keep: Tensor | None,
    dropout: DropoutMasks,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer in one native call, forward and backward (same contract as ``_torch_layer``).

    The op forms the input-to-gate terms itself, for the active units' rows only, as
    ``x_in @ w_in``: either ``x`` and the composed input weight ``W_v @ W_ih`` (cached in
    rollouts, or formed here when that pays), or the values ``x @ W_v`` and ``W_ih`` of the
    units side by side. Both are ``x @ W_v @ W_ih[k]``: the attention weight of a unit is a
    scalar per row, so the order of the products is free."""
    comm = layer.communication
    value_weight = layer.input_attention.value_weight
    x_in = x
    if composed is None and composing_pays(layer, x.shape[0] * x.shape[1]):
        composed = native.compose(value_weight, layer.weight_ih)
    if composed is None:  # read the values first: one (L*N, D) @ (D, V) GEMM, no W_v @ W_ih
        units, size, gates = layer.weight_ih.shape
        x_in = x @ value_weight
        composed = layer.weight_ih.transpose(0, 1).reshape(size, units * gates)
    config = native.LayerConfig(
        top_k=layer.top_k,
        lstm=layer.cell == "lstm",
        heads=0 if comm is None else comm.heads,
        key_size=0 if comm is None else comm.key_size,
        value_size=0 if comm is None else comm.value_size,
    )
    inputs = native.LayerInputs(
        keys=layer.input_keys(x),
        x=x_in,
        w_in=composed,
        h0=h,
        c0=c,
        keep=keep,
        recurrent=weights.recurrent,
        bias=weights.bias.squeeze(1),
        bias_ih=None if layer.cell == "lstm" else layer.bias_ih,
        in_mask=dropout.input,
        qkv=None if comm is None else comm.qkv_weight,
        out=None if comm is None else comm.out_weight,
        out_bias=None if comm is None or comm.out_bias is None else comm.out_bias.squeeze(1),
        comm_mask=dropout.communication,
    )
    return native.run_layer(config, inputs)
