"""The two attentions of a RIM layer (Goyal et al., ICLR 2021, sections 2.1 and 2.3).

``InputAttention`` decides which units read the input (the null-slot comparison and
top-k selection) and how strongly; ``CommunicationAttention`` lets units read each
other's states. Both work on all units at once, with one weight set per unit stored
as grouped tensors ``(K, in, out)``.

Symbols:
    l - sequence length          k - units (``num_units``)
    n - batch                    h - unit size
    d - input features           a - attention heads
    e - key size per head        v - value size
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn


def uniform_(weight: Tensor, fan_in: int) -> Tensor:
    """PyTorch's default for linear and recurrent layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(weight, -bound, bound)


class InputAttention(nn.Module):
    """Input attention with a null slot, and top-k selection of the units that read.

    The keys and values come from ``[0; x_t]``: a zero "null" row stacked on the input.
    The projections have no bias, so the null row's key and value are exactly zero and
    never need to be materialised: the null row's score is 0, and softmax over
    ``[null, input]`` puts ``sigmoid(s)`` on the input, where ``s`` is the input's
    score averaged over heads. The ``top_k`` units with the least attention on the null
    row (the largest ``s``) are active; ties go to the lower unit index.

    Because the null value is zero, a unit's read is ``sigmoid(s) * value(x_t)``: a
    scalar weight times a value shared by all units. That is what lets ``RIMCell``
    hoist the value and gate projections out of the time loop.

    Attributes:
        key_weight: ``(d, a*e)``, shared by all units, applied to the input.
        value_weight: ``(d, v)``, shared by all units, applied to the input.
        query_weight: ``(k, h, a*e)``, one matrix per unit, applied to the unit's
            previous hidden state.
    """

    def __init__(
        self,
        input_size: int,
        num_units: int,
        unit_size: int,
        key_size: int,
        value_size: int,
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.key_size = key_size
        self.dropout = dropout
        self.key_weight = nn.Parameter(uniform_(torch.empty(input_size, heads * key_size), input_size))
        self.value_weight = nn.Parameter(uniform_(torch.empty(input_size, value_size), input_size))
        self.query_weight = nn.Parameter(
            uniform_(torch.empty(num_units, unit_size, heads * key_size), unit_size)
        )

    def keys(self, x: Tensor) -> Tensor:
        """Input keys, pre-scaled so that a plain dot product gives the head-averaged score.

        ``(..., d) -> (..., a*e)``. Summing ``q * key`` over ``a*e`` then equals
        ``mean_a(q_a . k_a / sqrt(e))``, the score the paper averages over heads.
        """
        return x @ self.key_weight * self.score_scale

    @property
    def score_scale(self) -> float:
        """``1 / (a * sqrt(e))``: the heads' mean of scaled dot products as one dot product."""
        return 1.0 / (self.heads * math.sqrt(self.key_size))

    def folded_query_weight(self) -> Tensor:
        """The query map with the key map folded in, ``(k, h, d)``.

        The score is bilinear in the unit's state and the input, ``h W_q (x W_k)^T s``, so
        ``h @ (W_q W_k^T s)`` dotted with ``x`` itself is the same score, with no input
        keys to project. Cheaper where ``d <= a*e``.
        """
        return self.query_weight @ (self.key_weight.t() * self.score_scale)

    def select(
        self, query: Tensor, keys: Tensor, top_k: int, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attention weight on the input and the active units, for one time step.

        :param query: ``(k, n, a*e)`` queries from each unit's previous hidden state.
        :param keys: ``(n, a*e)`` the input keys of this step, from :meth:`keys`.
        :param top_k: how many units become active.
        :param mask: ``(k, n)`` dropout mask for the weights (zeros and ``1/(1-p)``), or
            None for no dropout. The caller draws it (see ``RIMCell.dropout_masks``).
        :return: ``weight (k, n)``: attention on the input row, and ``active (k, n)``:
            exactly ``top_k`` True per sample.
        """
        score = (query * keys).sum(-1)  # (k, n); the null row scores exactly 0
        num_units = score.shape[0]
        if top_k == num_units:
            active = torch.ones_like(score, dtype=torch.bool)
        else:
            # Least attention on the null row == largest score. A stable sort makes
            # ties deterministic (lower unit index first), which topk does not promise.
            order = score.detach().argsort(dim=0, descending=True, stable=True)[:top_k]
            active = torch.zeros_like(score, dtype=torch.bool).scatter_(0, order, True)
        weight = torch.sigmoid(score)  # softmax([0, s])[1]
        if mask is not None:
            weight = weight * mask
        return weight, active


COMM_READS = ("gated", "linear")


class CommunicationAttention(nn.Module):
    """Multi-head attention between units (paper section 2.3), all units at once.

    Every unit projects its state to a query, key and value with its own weights; each
    unit reads all units' states and maps the read back to its state size with its own
    output weights. The caller adds the read to the active units' states.

    How the read ``r`` (the heads' outputs side by side) becomes what is added:

    - ``"gated"``: ``sigmoid(r @ W_g + b_g) * tanh(r @ W_o + b_o)``, the official
      implementation's read (anirudh9119/RIMs, ``event_based/attention.py``). Each entry
      lies in [-1, 1] (open in exact arithmetic; float32 rounds saturated gates to 1), so an
      LSTM unit's hidden state stays within [-2, 2].
    - ``"linear"``: ``r @ W_o``, the paper's equation. Unbounded: the read is linear in
      all units' states, which already hold earlier reads, so states can grow step after
      step.

    Attributes:
        qkv_weight: ``(k, h, a*(2e+v))``, per-unit query, key and value projections.
        out_weight: ``(k, a*v, h)`` (``"linear"``) or ``(k, a*v, 2h)`` (``"gated"``: the
            output and gate columns side by side), per-unit output projection.
        out_bias: ``(k, 1, 2h)`` for ``"gated"``, None for ``"linear"``.
    """

    out_bias: nn.Parameter | None

    def __init__(
        self,
        num_units: int,
        unit_size: int,
        key_size: int,
        value_size: int,
        heads: int,
        dropout: float,
        read: str = "gated",
    ) -> None:
        super().__init__()
        self.heads = heads
        self.key_size = key_size
        self.value_size = value_size
        self.dropout = dropout
        self.read = read
        width = heads * (2 * key_size + value_size)
        read_width = heads * value_size
        out_width = 2 * unit_size if read == "gated" else unit_size
        self.qkv_weight = nn.Parameter(uniform_(torch.empty(num_units, unit_size, width), unit_size))
        self.out_weight = nn.Parameter(uniform_(torch.empty(num_units, read_width, out_width), read_width))
        self.out_bias = (
            nn.Parameter(uniform_(torch.empty(num_units, 1, out_width), read_width))
            if read == "gated"
            else None
        )
        self._register_load_state_dict_pre_hook(self._check_read_layout)

    def _check_read_layout(self, state_dict: dict[str, Tensor], prefix: str, *args: object) -> None:
        """Name the mismatch when a state dict was saved with the other ``comm_read``."""
        saved = state_dict.get(prefix + "out_weight")
        if saved is None:
            return
        saved_read = "gated" if prefix + "out_bias" in state_dict else "linear"
        if saved_read != self.read:
            raise ValueError(
                f"the saved weights use comm_read={saved_read!r} but this RIM was built with "
                f"comm_read={self.read!r}; build it with comm_read={saved_read!r}. RIMs saved before "
                "comm_read existed use 'linear': load such a RecurrentPPO model with "
                "custom_objects={'policy_kwargs': {<its policy_kwargs>, 'rim_kwargs': {<its rim_kwargs>, "
                f"'comm_read': {saved_read!r}}}}}"
            )

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """``hidden (k, n, h) -> read (k, n, h)``: what each unit reads from all units.

        ``mask``: ``(n, a, k, k)`` dropout mask for the attention weights (zeros and
        ``1/(1-p)``), or None for no dropout; the caller draws it.
        """
        a, e, v = self.heads, self.key_size, self.value_size
        qkv = torch.bmm(hidden, self.qkv_weight)
        # (k, n, a*(2e+v)) -> per (sample, head) batches over units, so both products
        # are bmm on contiguous blocks and softmax runs on a contiguous last dimension.
        q, k, v = qkv.split([a * e, a * e, a * v], dim=-1)
        q = rearrange(q, "k n (a e) -> (n a) k e", a=a)
        k = rearrange(k, "j n (a e) -> (n a) e j", a=a)
        v = rearrange(v, "j n (a v) -> (n a) j v", a=a)
        weight = torch.bmm(q, k).mul_(1.0 / math.sqrt(e)).softmax(dim=-1)  # (n*a, k, j)
        if mask is not None:
            weight = weight * mask.reshape(weight.shape)
        read = rearrange(torch.bmm(weight, v), "(n a) k v -> k n (a v)", a=a)
        if self.out_bias is None:
            return torch.bmm(read, self.out_weight)
        out, gate = torch.baddbmm(self.out_bias, read, self.out_weight).chunk(2, dim=-1)
        return torch.sigmoid(gate) * torch.tanh(out)
