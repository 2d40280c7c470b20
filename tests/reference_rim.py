"""A deliberately plain RIM, written straight from the paper, to check the fast module.

No batching tricks: a Python loop over units, each with its own small LSTM/GRU step;
the null input is a real zero row; attention is a literal softmax over ``[null, x_t]``;
the top-k units are found by sorting the null attention. It reads its weights from a
``rim_agents.nn.RIM`` so both compute the same function (in eval mode: no dropout).

Goyal et al., "Recurrent Independent Mechanisms", ICLR 2021 (arXiv 1909.10893):
section 2.1 (input attention), 2.2 (independent dynamics), 2.3 (communication).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rim_agents.nn import RIM, RIMCell


def _lstm_step(read: Tensor, h: Tensor, c: Tensor, cell: RIMCell, i: int) -> tuple[Tensor, Tensor]:
    gates = read @ cell.weight_ih[i] + cell.bias_ih[i] + h @ cell.weight_hh[i] + cell.bias_hh[i]
    in_gate, forget, out_gate, cand = gates.chunk(4, dim=-1)  # the module's gate order: i, f, o, c
    c_new = torch.sigmoid(forget) * c + torch.sigmoid(in_gate) * torch.tanh(cand)
    return torch.sigmoid(out_gate) * torch.tanh(c_new), c_new


def _gru_step(read: Tensor, h: Tensor, cell: RIMCell, i: int) -> Tensor:
    x_r, x_z, x_n = (read @ cell.weight_ih[i] + cell.bias_ih[i]).chunk(3, dim=-1)
    h_r, h_z, h_n = (h @ cell.weight_hh[i] + cell.bias_hh[i]).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def _communicate(states: list[Tensor], cell: RIMCell) -> list[Tensor]:
    """What each unit reads from all units: per-head softmax over units, then its own output map."""
    comm = cell.communication
    assert comm is not None
    a, e, v = comm.heads, comm.key_size, comm.value_size
    proj = [states[j] @ comm.qkv_weight[j] for j in range(len(states))]  # each (n, a*(2e+v))
    reads = []
    for i in range(len(states)):
        heads = []
        for head in range(a):
            q = proj[i][:, head * e : (head + 1) * e]
            keys = torch.stack([p[:, a * e + head * e : a * e + (head + 1) * e] for p in proj], 1)
            values = torch.stack([p[:, 2 * a * e + head * v : 2 * a * e + (head + 1) * v] for p in proj], 1)
            score = (keys @ q.unsqueeze(-1)).squeeze(-1) / math.sqrt(e)  # (n, units)
            heads.append((torch.softmax(score, dim=-1).unsqueeze(-1) * values).sum(1))
        read = torch.cat(heads, dim=-1)
        if comm.out_bias is None:  # "linear": the paper's equation
            reads.append(read @ comm.out_weight[i])
        else:  # "gated": sigmoid(gate) * tanh(output), output and gate columns side by side
            size = comm.out_weight.shape[-1] // 2
            out = read @ comm.out_weight[i][:, :size] + comm.out_bias[i, 0, :size]
            gate = read @ comm.out_weight[i][:, size:] + comm.out_bias[i, 0, size:]
            reads.append(torch.sigmoid(gate) * torch.tanh(out))
    return reads


def reference_forward(
    rim: RIM, x: Tensor, hx: tuple[Tensor, Tensor] | None = None, episode_starts: Tensor | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
    """``x (L, N, D)`` -> ``output (L, N, K*H), (h_n, c_n), active (L, layers, N, K)``."""
    seq_len, batch, _ = x.shape
    units, size, top_k = rim.num_units, rim.unit_size, rim.top_k
    if hx is None:
        hx = (x.new_zeros(rim.num_layers, batch, units * size),) * 2
    layer_input = x
    h_n, c_n, actives = [], [], []
    for index, cell in enumerate(rim.layers):
        attn = cell.input_attention
        a, e = attn.heads, attn.key_size
        h = [hx[0][index][:, i * size : (i + 1) * size] for i in range(units)]
        c = [hx[1][index][:, i * size : (i + 1) * size] for i in range(units)]
        if rim.cell == "gru":
            c = [torch.zeros_like(state) for state in h]
        outputs, layer_active = [], []
        for t in range(seq_len):
            if episode_starts is not None:
                keep = (1 - episode_starts[t]).unsqueeze(-1)
                h = [state * keep for state in h]
                c = [state * keep for state in c]
            x_t = layer_input[t]
            rows = torch.stack([torch.zeros_like(x_t), x_t], dim=1)  # (n, 2, d): [null; x_t]
            keys = rows @ attn.key_weight  # (n, 2, a*e)
            values = rows @ attn.value_weight  # (n, 2, v)
            probs = []
            for i in range(units):
                query = h[i] @ attn.query_weight[i]  # (n, a*e)
                per_head = [
                    (
                        keys[:, :, hd * e : (hd + 1) * e] @ query[:, hd * e : (hd + 1) * e].unsqueeze(-1)
                    ).squeeze(-1)
                    / math.sqrt(e)
                    for hd in range(a)
                ]
                probs.append(torch.softmax(torch.stack(per_head).mean(0), dim=-1))  # (n, 2)
            null_attention = torch.stack([p[:, 0] for p in probs], dim=1)  # (n, units)
            order = null_attention.argsort(dim=1, stable=True)[:, :top_k]
            active = torch.zeros(batch, units, dtype=torch.bool).scatter_(1, order, True)
            new_h, new_c = [], []
            for i in range(units):
                read = (probs[i].unsqueeze(-1) * values).sum(1)  # (n, v); the null value is 0
                if rim.cell == "lstm":
                    h_i, c_i = _lstm_step(read, h[i], c[i], cell, i)
                else:
                    h_i, c_i = _gru_step(read, h[i], cell, i), c[i]
                mask = active[:, i : i + 1]
                new_h.append(torch.where(mask, h_i, h[i]))
                new_c.append(torch.where(mask, c_i, c[i]))
            if cell.communication is not None:
                reads = _communicate(new_h, cell)
                new_h = [
                    torch.where(active[:, i : i + 1], new_h[i] + reads[i], new_h[i]) for i in range(units)
                ]
            h, c = new_h, new_c
            outputs.append(torch.cat(h, dim=-1))
            layer_active.append(active)
        layer_input = torch.stack(outputs)
        h_n.append(torch.cat(h, dim=-1))
        c_n.append(torch.cat(c, dim=-1))
        actives.append(torch.stack(layer_active))
    return layer_input, (torch.stack(h_n), torch.stack(c_n)), torch.stack(actives, dim=1)
