"""RIMCell: one time step of one RIM layer, for all units at once.

Per step (paper sections 2.1-2.3):
1. input attention: each unit queries ``[0; x_t]`` from its previous state; the
   ``top_k`` units that attend least to the null row become active;
2. independent dynamics: every unit runs its own LSTM (or GRU) on its read, with its
   own weights, as one batched matmul over grouped weights ``(k, in, out)``;
3. communication: units attend over all units' new states (an inactive unit's new
   state is its carried state); active units add their read (gated and squashed by
   default, see :class:`CommunicationAttention`);
4. inactive units keep h and c from the previous step, bit for bit.

Work that depends only on the input is done for the whole sequence in
:meth:`RIMCell.prepare`; :meth:`RIMCell.step` holds only what needs the previous state.

Symbols:
    l - sequence length          k - units (``num_units``)
    n - batch                    h - unit size
    d - input features           g - gate width (4h for LSTM, 3h for GRU)
    v - input value size         q - input query width (heads * key size, or d where the
                                     key map is folded into the queries: ``folds_keys``)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from rim_agents.nn.attention import CommunicationAttention, InputAttention, uniform_

GATES = {"lstm": 4, "gru": 3}


class PreparedInput(NamedTuple):
    """What one layer needs from its input at each step, computed for all steps at once.

    ``keys``: ``(l, n, q)``; ``gates``: ``(l, n, k, g)``, the input-to-gate term of a unit
    that reads with weight 1.
    """

    keys: Tensor
    gates: Tensor


class DropoutMasks(NamedTuple):
    """Attention dropout for a whole sequence, drawn once per call; None where off.

    ``input``: ``(l, k, n)`` on the input-attention weights; ``communication``:
    ``(l, n, a, k, k)`` on the communication weights. Entries are 0 or ``1/(1-p)``.
    """

    input: Tensor | None
    communication: Tensor | None


class StepWeights(NamedTuple):
    """Per-call weight layouts, built once per forward rather than once per step.

    ``recurrent``: ``(k, h, g+q)``, gate and query weights side by side, since both read
    h(t-1); ``bias``: ``(k, 1, g+q)``, the bias of that matmul.
    """

    recurrent: Tensor
    bias: Tensor


class RIMCell(nn.Module):
    """All units of one RIM layer for one time step (LSTM or GRU dynamics).

    States are kept unit-major, ``(k, n, h)``, so every per-unit matmul is a ``bmm``.
    Arguments are those of :class:`rim_agents.nn.RIM` (validated there).

    Attributes:
        weight_ih: ``(k, v, g)`` each unit's input-to-gate weights (applied to its read).
        weight_hh: ``(k, h, g)`` each unit's recurrent weights.
        bias_ih, bias_hh: ``(k, g)``. Gate order: LSTM ``i, f, o, c``; GRU ``r, z, n``.
        input_attention: :class:`InputAttention`.
        attend: False for ``RIM(input_attention=False)``: every unit reads with weight 1
            (times the input dropout mask, if any) and every unit is active.
        communication: :class:`CommunicationAttention`, or None when ``communicate=False``.
    """

    def __init__(
        self,
        input_size: int,
        num_units: int,
        unit_size: int,
        top_k: int,
        cell: str,
        input_key_size: int,
        input_value_size: int,
        input_heads: int,
        input_dropout: float,
        comm_key_size: int,
        comm_value_size: int,
        comm_heads: int,
        comm_dropout: float,
        communicate: bool,
        comm_read: str = "gated",
        input_attention: bool = True,
    ) -> None:
        super().__init__()
        self.attend = input_attention
        self.num_units = num_units
        self.unit_size = unit_size
        self.top_k = top_k
        self.cell = cell
        gates = GATES[cell] * unit_size
        self.input_attention = InputAttention(
            input_size, num_units, unit_size, input_key_size, input_value_size, input_heads, input_dropout
        )
        self.weight_ih = nn.Parameter(uniform_(torch.empty(num_units, input_value_size, gates), unit_size))
        self.weight_hh = nn.Parameter(uniform_(torch.empty(num_units, unit_size, gates), unit_size))
        self.bias_ih = nn.Parameter(uniform_(torch.empty(num_units, gates), unit_size))
        self.bias_hh = nn.Parameter(uniform_(torch.empty(num_units, gates), unit_size))
        self._inference_cache: tuple[tuple, Tensor, StepWeights] | None = None
        self.communication = (
            CommunicationAttention(
                num_units, unit_size, comm_key_size, comm_value_size, comm_heads, comm_dropout, comm_read
            )
            if communicate
            else None
        )

    def prepare(self, x: Tensor, composed: Tensor | None = None) -> PreparedInput:
        """Everything that depends only on the input, for all ``l`` steps in two matmuls.

        :param x: ``(l, n, d)``.
        :param composed: :meth:`composed_input_weight` when the caller already has it.

        A unit's read is ``w * (x @ W_v)`` with a scalar attention weight ``w``, and
        nothing non-linear sits between the value projection and the gates, so the
        input-to-gate term is ``w * (x @ W_v @ W_ih)``. The product is associated in
        whichever order costs less: composing ``W_v @ W_ih`` once is cheaper for long
        batches, projecting the values first for a single short step with wide inputs.
        """
        l, n, d = x.shape
        k = self.num_units
        flat = x.reshape(l * n, d)
        keys = self.input_keys(x)
        value_weight = self.input_attention.value_weight
        if composed is None and d <= l * n:
            composed = self.composed_input_weight()
        if composed is not None:
            gates = (flat @ composed).view(l, n, k, -1)  # (l n) (k g) -> l n k g
        else:
            gates = torch.matmul(flat @ value_weight, self.weight_ih)  # k (l n) g
            gates = gates.transpose(0, 1).reshape(l, n, k, -1)  # -> l n k g
        return PreparedInput(keys, gates)

    @property
    def folds_keys(self) -> bool:
        """Whether the input-attention scores read the input itself, with the key map
        folded into the queries (:meth:`InputAttention.folded_query_weight`): where the
        input is no wider than the keys, ``d <= q``. The same scores either way."""
        attention = self.input_attention
        return attention.key_weight.shape[0] <= attention.key_weight.shape[1]

    def input_keys(self, x: Tensor) -> Tensor:
        """The input-attention keys of every step, ``(l, n, d) -> (l, n, q)``: ``x`` itself
        where the key map is folded into the queries (``q = d``, see :attr:`folds_keys`)."""
        if self.folds_keys:
            return x
        l, n, d = x.shape
        return self.input_attention.keys(x.reshape(l * n, d)).view(l, n, -1)

    def composed_input_weight(self) -> Tensor:
        """``W_v @ W_ih`` of every unit side by side, ``(d, k*g)``: the input-to-gate map of
        a unit that reads with weight 1, one GEMM over all steps and units."""
        k, v, g = self.weight_ih.shape
        # One (d, v) @ (v, k*g) matmul: cheaper with autograd than a broadcast batched one.
        return self.input_attention.value_weight @ self.weight_ih.transpose(0, 1).reshape(v, k * g)

    def inference_weights(self) -> tuple[Tensor, StepWeights]:
        """:meth:`composed_input_weight` and :meth:`step_weights` for calls without autograd.

        A rollout calls the RIM once per environment step with the same weights, so these
        are kept and rebuilt only when a parameter they use has changed: another tensor
        (``.to()``, a new Parameter) or an in-place update (optimizer steps and
        ``load_state_dict`` bump a tensor's version counter).
        """
        attention = self.input_attention
        used = (
            attention.value_weight,
            attention.query_weight,
            attention.key_weight,
            self.weight_ih,
            self.weight_hh,
            self.bias_ih,
            self.bias_hh,
        )
        key = tuple((id(p), p.data_ptr(), p._version) for p in used)
        if self._inference_cache is None or self._inference_cache[0] != key:
            with torch.no_grad():
                self._inference_cache = (key, self.composed_input_weight(), self.step_weights())
        return self._inference_cache[1], self._inference_cache[2]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._inference_cache = None  # .to(), .double(), ...: never reuse weights of another copy
        return super()._apply(fn, recurse)

    def dropout_masks(self, seq_len: int, batch: int, like: Tensor) -> DropoutMasks:
        """Draw the attention dropout masks of a training call (see :class:`DropoutMasks`)."""

        def draw(p: float, *shape: int) -> Tensor | None:
            if p == 0:
                return None
            # uniform_ < 1-p rather than bernoulli_(1-p): the same distribution, drawn in
            # half the time on the CPU (the masks are large: l*n*a*k*k for communication).
            return like.new_empty(shape).uniform_().lt_(1.0 - p).div_(1.0 - p)

        k = self.num_units
        comm = self.communication
        return DropoutMasks(
            draw(self.input_attention.dropout, seq_len, k, batch),
            None if comm is None else draw(comm.dropout, seq_len, batch, comm.heads, k, k),
        )

    def step_weights(self) -> StepWeights:
        """Gate and query weights side by side, and their bias (zero for the queries)."""
        attention = self.input_attention
        query = attention.folded_query_weight() if self.folds_keys else attention.query_weight
        recurrent = torch.cat([self.weight_hh, query], dim=-1)
        # LSTM: both biases add outside the gates, so fold them into the recurrent matmul.
        # GRU: b_hn sits inside r * (W_hn h + b_hn); b_ih is added with the input term.
        gate_bias = self.bias_ih + self.bias_hh if self.cell == "lstm" else self.bias_hh
        bias = torch.cat([gate_bias, gate_bias.new_zeros(query.shape[0], query.shape[-1])], dim=-1)
        return StepWeights(recurrent, bias.unsqueeze(1))

    def step(
        self,
        keys: Tensor,
        input_gates: Tensor,
        h: Tensor,
        c: Tensor,
        weights: StepWeights,
        input_mask: Tensor | None = None,
        comm_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One step for all units.

        :param keys: ``(n, q)`` and ``input_gates``: ``(k, n, g)``, this step's slices of
            :meth:`prepare`.
        :param h: ``(k, n, h)`` hidden state at t-1; ``c``: the same for the LSTM cell
            state (ignored by the GRU).
        :param weights: from :meth:`step_weights`.
        :param input_mask: ``(k, n)``, ``comm_mask``: ``(n, a, k, k)``, this step's
            slices of :meth:`dropout_masks`, or None.
        :return: ``h (k, n, h)``, ``c (k, n, h)`` at t, and ``active (k, n)`` booleans.
        """
        gate_width = input_gates.shape[-1]
        recurrent = torch.baddbmm(weights.bias, h, weights.recurrent)  # (k, n, g+q)
        hidden_gates, query = recurrent.split([gate_width, recurrent.shape[-1] - gate_width], dim=-1)
        if self.attend:
            read_weight, active = self.input_attention.select(query, keys, self.top_k, input_mask)
        else:  # the input_attention=False ablation: every unit reads value(x_t) with weight 1
            read_weight = torch.ones_like(hidden_gates[..., 0]) if input_mask is None else input_mask
            active = torch.ones_like(read_weight, dtype=torch.bool)
        read_weight = read_weight.unsqueeze(-1)
        mask = active.unsqueeze(-1)
        if self.cell == "lstm":
            gates = torch.addcmul(hidden_gates, read_weight, input_gates)
            ifo, cand = gates.split([3 * self.unit_size, self.unit_size], dim=-1)
            i, f, o = torch.sigmoid(ifo).chunk(3, dim=-1)
            c_new = torch.addcmul(f * c, i, torch.tanh(cand))
            h_new = o * torch.tanh(c_new)
            c_new = torch.where(mask, c_new, c)
        else:
            x_gates = torch.addcmul(self.bias_ih.unsqueeze(1), read_weight, input_gates)
            x_rz, x_n = x_gates.split([2 * self.unit_size, self.unit_size], dim=-1)
            h_rz, h_n = hidden_gates.split([2 * self.unit_size, self.unit_size], dim=-1)
            r, z = torch.sigmoid(x_rz + h_rz).chunk(2, dim=-1)
            cand = torch.tanh(torch.addcmul(x_n, r, h_n))
            h_new = torch.lerp(cand, h, z)  # (1 - z) * cand + z * h
            c_new = c
        h_new = torch.where(mask, h_new, h)
        if self.communication is not None:
            h_new = torch.where(mask, h_new + self.communication(h_new, comm_mask), h)
        return h_new, c_new, active
