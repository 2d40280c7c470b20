"""rim_agents.nn.RIM: agreement with the plain reference, RIM semantics, the nn.LSTM contract."""

from __future__ import annotations

import re

import pytest
import torch

from rim_agents.nn import RIM
from tests.reference_rim import reference_forward
from tests.test_native import needs_native

SMALL = dict(num_units=4, unit_size=8, top_k=2, input_key_size=6, input_value_size=10, comm_key_size=5,
             comm_value_size=7)  # fmt: skip


def small_rim(**overrides) -> RIM:
    torch.manual_seed(0)
    kwargs = {**SMALL, "input_size": 5, **overrides}
    return RIM(**kwargs).eval()


def make_starts(seq_len: int, batch: int) -> torch.Tensor:
    starts = torch.zeros(seq_len, batch)
    starts[3, 0] = 1.0
    starts[5, 1:] = 1.0
    return starts


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("communication", ["gated", "linear", "off"])
def test_fast_matches_reference_outputs_states_and_gradients(cell, num_layers, communication):
    read = {"comm_read": communication} if communication != "off" else {"communicate": False}
    rim = small_rim(cell=cell, num_layers=num_layers, input_heads=2, comm_heads=3, **read)
    torch.manual_seed(1)
    x = torch.randn(9, 3, 5)
    hx = (torch.randn(num_layers, 3, 32), torch.randn(num_layers, 3, 32))
    starts = make_starts(9, 3)

    out, (h_n, c_n) = rim(x, hx, episode_starts=starts)
    active = rim.last_active
    loss = out.pow(2).sum() + h_n.sum() + c_n.sum()
    fast_grads = torch.autograd.grad(loss, list(rim.parameters()))

    ref_out, (ref_h, ref_c), ref_active = reference_forward(rim, x, hx, episode_starts=starts)
    ref_loss = ref_out.pow(2).sum() + ref_h.sum() + ref_c.sum()
    ref_grads = torch.autograd.grad(ref_loss, list(rim.parameters()))

    assert torch.equal(active, ref_active)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_n, ref_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_n, ref_c, atol=1e-5, rtol=1e-5)
    for (name, _), fast, ref in zip(rim.named_parameters(), fast_grads, ref_grads, strict=True):
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_single_step_path_matches_reference_for_wide_inputs():
    # One step of a few samples with many features takes the other association order in prepare().
    rim = small_rim(input_size=40)
    x = torch.randn(1, 2, 40)
    out, _ = rim(x)
    ref_out, _, _ = reference_forward(rim, x)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_exactly_k_units_change_and_inactive_units_keep_state_bit_for_bit(cell):
    rim = small_rim(cell=cell, top_k=3, num_units=5)
    x = torch.randn(12, 6, 5)
    h = torch.randn(1, 6, 40)
    c = torch.randn(1, 6, 40)
    for t in range(12):
        out, (h_new, c_new) = rim(x[t : t + 1], (h, c))
        active = rim.last_active[0, 0]  # (n, k)
        assert active.sum(-1).tolist() == [3] * 6
        before = h.view(6, 5, 8)
        after = h_new.view(6, 5, 8)
        changed = (after != before).any(-1)
        assert torch.equal(changed, active)
        if cell == "lstm":
            c_changed = (c_new.view(6, 5, 8) != c.view(6, 5, 8)).any(-1)
            assert torch.equal(c_changed, active)
        else:
            assert torch.count_nonzero(c_new) == 0
        torch.testing.assert_close(out[0], h_new[0], atol=0, rtol=0)
        h, c = h_new, c_new


def test_one_call_over_a_sequence_equals_step_by_step_calls():
    rim = small_rim(num_layers=2)
    x = torch.randn(10, 3, 5)
    starts = make_starts(10, 3)
    out, (h_n, c_n) = rim(x, episode_starts=starts)
    state = None
    steps = []
    for t in range(10):
        step_out, state = rim(x[t : t + 1], state, episode_starts=starts[t : t + 1])
        steps.append(step_out)
    torch.testing.assert_close(torch.cat(steps), out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(state[0], h_n, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(state[1], c_n, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_reset_at_step_t_equals_a_fresh_call_from_zero_state(cell):
    rim = small_rim(cell=cell, num_layers=2)
    x = torch.randn(10, 4, 5)
    starts = torch.zeros(10, 4)
    starts[6] = 1.0
    out, _ = rim(x, (torch.randn(2, 4, 32), torch.randn(2, 4, 32)), episode_starts=starts)
    fresh, _ = rim(x[6:])
    torch.testing.assert_close(out[6:], fresh, atol=1e-6, rtol=1e-6)
    # Only the reset samples restart: resetting sample 0 alone leaves the others as they were.
    only_first = torch.zeros(10, 4)
    only_first[6, 0] = 1.0
    out_first, _ = rim(x, episode_starts=only_first)
    plain, _ = rim(x)
    # Not bit for bit: the native op multiplies the active rows of a batch together, and the
    # rounding of a matmul can depend on how many rows it has.
    torch.testing.assert_close(out_first[:, 1:], plain[:, 1:], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(out_first[6:, 0], plain[6:, 0])


def test_dense_variant_activates_every_unit():
    rim = small_rim(top_k=4)
    rim(torch.randn(6, 2, 5))
    assert bool(rim.last_active.all())


def test_ties_go_to_the_lower_unit_index():
    # With zero state every query is zero: all units score 0 and tie; units 0..k-1 win.
    rim = small_rim(top_k=2, input_key_size=3)
    rim(torch.randn(1, 3, 5))
    assert rim.last_active[0, 0].tolist() == [[True, True, False, False]] * 3


def test_shapes_for_every_case_of_the_contract():
    rim = small_rim(num_layers=2)
    assert (rim.input_size, rim.hidden_size, rim.num_layers) == (5, 32, 2)
    out, (h, c) = rim(torch.randn(7, 3, 5))
    assert out.shape == (7, 3, 32) and h.shape == (2, 3, 32) and c.shape == (2, 3, 32)
    assert rim.last_active.shape == (7, 2, 3, 4) and rim.last_active.dtype == torch.bool

    out, (h, c) = rim(torch.randn(7, 5), (torch.zeros(2, 32), torch.zeros(2, 32)), torch.zeros(7))
    assert out.shape == (7, 32) and h.shape == (2, 32) and c.shape == (2, 32)
    assert rim.last_active.shape == (7, 2, 4)

    batch_first = small_rim(num_layers=2, batch_first=True)
    x = torch.randn(3, 7, 5)
    out_bf, (h_bf, _) = batch_first(x, episode_starts=torch.zeros(3, 7))
    out_tf, (_h_tf, _) = rim(x.transpose(0, 1))
    assert out_bf.shape == (3, 7, 32) and h_bf.shape == (2, 3, 32)
    torch.testing.assert_close(out_bf.transpose(0, 1), out_tf)


def test_unbatched_input_equals_a_batch_of_one():
    rim = small_rim()
    x = torch.randn(6, 5)
    out, (h, _c) = rim(x)
    out_b, (h_b, _c_b) = rim(x.unsqueeze(1))
    torch.testing.assert_close(out, out_b[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(h, h_b[:, 0], atol=0, rtol=0)


def test_hidden_vector_holds_the_units_side_by_side():
    rim = small_rim()
    out, _ = rim(torch.randn(5, 2, 5))
    units = out.view(5, 2, 4, 8)
    changed = (units[1:] != units[:-1]).any(-1)  # (l-1, n, k)
    assert torch.equal(changed, rim.last_active[1:, 0])


def test_gru_returns_a_zero_cell_state():
    rim = small_rim(cell="gru")
    _, (h, c) = rim(torch.randn(4, 2, 5), (torch.randn(1, 2, 32), torch.randn(1, 2, 32)))
    assert c.shape == h.shape and torch.count_nonzero(c) == 0


def test_gradient_reaches_every_parameter_over_a_sequence():
    torch.manual_seed(0)
    rim = RIM(5, num_units=4, unit_size=8, top_k=2, num_layers=2, dropout=0.2)
    out, (_h, c) = rim(torch.randn(20, 8, 5))
    (out.sum() + c.sum()).backward()
    for name, param in rim.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gradient_flows_through_an_inactive_units_carried_state():
    rim = small_rim(top_k=1, communicate=False)
    h0 = torch.randn(1, 1, 32, requires_grad=True)
    out, _ = rim(torch.randn(3, 1, 5), (h0, torch.zeros(1, 1, 32)))
    never_active = (~rim.last_active[:, 0, 0]).all(0).nonzero().flatten()
    assert len(never_active) > 0
    unit = int(never_active[0])
    out[-1, 0, unit * 8 : (unit + 1) * 8].sum().backward()
    # The carried state is the identity of h0 for that unit: its gradient is exactly one.
    assert torch.equal(h0.grad[0, 0, unit * 8 : (unit + 1) * 8], torch.ones(8))


def _run_with_loud_communication(comm_read: str, scale: float) -> torch.Tensor:
    """Largest abs(h) per step of an LSTM RIM whose communication weights are scaled up,
    over 200 steps carried across 20 calls as PPO carries states across rollouts."""
    rim = small_rim(comm_read=comm_read)
    with torch.no_grad():
        rim.layers[0].communication.qkv_weight.mul_(scale)
        rim.layers[0].communication.out_weight.mul_(scale)
    torch.manual_seed(2)
    state, peaks = None, []
    with torch.no_grad():
        for _ in range(20):
            out, state = rim(torch.randn(10, 16, 5), state)
            peaks.append(out.abs().amax(dim=(1, 2)))
    return torch.cat(peaks)


@pytest.mark.parametrize("scale", [3.0, 5.0])
def test_gated_read_keeps_lstm_hidden_state_within_two(scale):
    peaks = _run_with_loud_communication("gated", scale)
    # o * tanh(c) is in [-1, 1] and sigmoid(gate) * tanh(read) too; inactive units carry such a value.
    assert peaks.max() <= 2.0


def test_linear_read_lets_the_hidden_state_grow_until_it_is_not_finite():
    # The same weights with the paper's plain residual: each read is linear in states that
    # already hold earlier reads, so above some gain the state grows geometrically.
    peaks = _run_with_loud_communication("linear", 3.0)
    assert peaks[:10].max() < 100.0
    late = peaks[-10:]
    assert ((late > 1e20) | ~torch.isfinite(late)).all()  # huge, or already overflowed (inf, nan)
    assert not torch.isfinite(_run_with_loud_communication("linear", 5.0)[-10:]).any()


@pytest.mark.parametrize(("saved", "built"), [("linear", "gated"), ("gated", "linear")])
def test_loading_weights_of_the_other_comm_read_names_it(saved, built):
    state = small_rim(comm_read=saved).state_dict()
    with pytest.raises(ValueError, match=rf"saved weights use comm_read='{saved}'.*comm_read='{built}'"):
        small_rim(comm_read=built).load_state_dict(state)


def test_dropout_is_active_only_in_training():
    rim = RIM(5, num_units=4, unit_size=8, top_k=2, input_dropout=0.5, comm_dropout=0.5)
    x = torch.randn(6, 3, 5)
    rim.eval()
    assert torch.equal(rim(x)[0], rim(x)[0])
    rim.train()
    torch.manual_seed(1)
    first = rim(x)[0]
    torch.manual_seed(2)
    assert not torch.equal(first, rim(x)[0])


def test_rim_learns_a_tiny_memory_task():
    # Output at the last step the sign of the first input: needs memory across 8 steps.
    torch.manual_seed(0)
    rim = RIM(1, num_units=4, unit_size=16, top_k=2, input_dropout=0.0, comm_dropout=0.0)
    head = torch.nn.Linear(64, 1)
    opt = torch.optim.Adam([*rim.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(300):
        x = torch.randn(8, 32, 1)
        target = (x[0, :, 0] > 0).float()
        out, _ = rim(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(out[-1]).squeeze(-1), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # Chance level is ln 2 = 0.69.
    first, last = losses[0], sum(losses[-20:]) / 20
    assert first > 0.6 and last < 0.15, (first, last)


BAD_ARGUMENTS = [
    ({"input_size": 0}, "input_size must be a positive integer, got 0"),
    ({"num_units": -1}, "num_units must be a positive integer, got -1"),
    ({"unit_size": 2.5}, "unit_size must be a positive integer, got 2.5"),
    ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
    ({"top_k": 0}, "top_k must be a positive integer, got 0"),
    ({"top_k": 7}, "top_k must be between 1 and num_units=6, got 7"),
    ({"cell": "rnn"}, "cell must be one of ['gru', 'lstm'], got 'rnn'"),
    ({"input_key_size": 0}, "input_key_size must be a positive integer, got 0"),
    ({"input_value_size": 0}, "input_value_size must be a positive integer, got 0"),
    ({"input_heads": 0}, "input_heads must be a positive integer, got 0"),
    ({"comm_key_size": 0}, "comm_key_size must be a positive integer, got 0"),
    ({"comm_value_size": -3}, "comm_value_size must be a positive integer, got -3"),
    ({"comm_heads": True}, "comm_heads must be a positive integer, got True"),
    ({"input_dropout": 1.0}, "input_dropout must be a number in [0, 1), got 1.0"),
    ({"comm_dropout": -0.1}, "comm_dropout must be a number in [0, 1), got -0.1"),
    ({"dropout": 2}, "dropout must be a number in [0, 1), got 2"),
    ({"comm_read": "residual"}, "comm_read must be one of ['gated', 'linear'], got 'residual'"),
    ({"input_attention": 0}, "input_attention must be True or False, got 0"),
    (
        {"input_attention": False},
        "input_attention=False lets every unit read the input, so top_k must equal num_units=6, got top_k=4",
    ),
    (
        {"input_attention": False, "top_k": 6, "backend": "native"},
        "backend='native' cannot run input_attention=False",
    ),
    ({"cuda_graphs": 1}, "cuda_graphs must be True or False, got 1"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS, ids=[next(iter(k)) for k, _ in BAD_ARGUMENTS])
def test_bad_constructor_argument_raises_a_value_error_naming_it(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        RIM(**{"input_size": 4, **kwargs})


def test_input_of_the_wrong_rank_is_rejected():
    with pytest.raises(
        ValueError, match=r"input must be 3-D \(L, N, input_size\) or 2-D.*got shape \(2, 3, 4, 5\)"
    ):
        small_rim()(torch.randn(2, 3, 4, 5))


def test_input_of_the_wrong_feature_size_is_rejected():
    with pytest.raises(ValueError, match=r"input_size=5 features .* got shape \(2, 3, 6\)"):
        small_rim()(torch.randn(2, 3, 6))


@pytest.mark.parametrize("which", [0, 1])
def test_state_of_the_wrong_shape_is_rejected(which):
    state = [torch.zeros(1, 3, 32), torch.zeros(1, 3, 32)]
    state[which] = torch.zeros(1, 2, 32)
    name = ("h_0", "c_0")[which]
    with pytest.raises(ValueError, match=rf"{name} must have shape .*=\(1, 3, 32\), got \(1, 2, 32\)"):
        small_rim()(torch.randn(4, 3, 5), tuple(state))


def test_episode_starts_of_the_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"episode_starts must have shape \(L, N\)=\(4, 3\), got \(3, 4\)"):
        small_rim()(torch.randn(4, 3, 5), episode_starts=torch.zeros(3, 4))


@pytest.mark.parametrize("backend", [pytest.param("native", marks=needs_native), "torch"])
def test_calls_without_autograd_see_every_weight_change(backend):
    # Rollouts reuse the composed weights between calls; any change of the weights must show.
    rim = small_rim(backend=backend)
    x = torch.randn(1, 3, 5)

    def without_grad(module: RIM) -> torch.Tensor:
        with torch.no_grad():
            return module(x)[0]

    before = without_grad(rim)
    optimizer = torch.optim.SGD(rim.parameters(), lr=0.5)
    rim(torch.randn(4, 3, 5))[0].pow(2).sum().backward()
    optimizer.step()
    after = without_grad(rim)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, rim(x)[0].detach(), atol=1e-6, rtol=1e-6)

    other = small_rim(backend=backend)
    torch.nn.init.normal_(other.layers[0].weight_ih)
    rim.load_state_dict(other.state_dict())
    torch.testing.assert_close(without_grad(rim), without_grad(other), atol=0, rtol=0)

    double = rim.double()
    with torch.no_grad():
        out = double(x.double())[0]
    torch.testing.assert_close(out, double(x.double())[0].detach(), atol=1e-12, rtol=1e-12)


def test_without_input_attention_one_unit_is_an_lstm_reading_the_composed_input_weight():
    """input_attention=False, one unit, no communication: exactly nn.LSTM with W_ih = (W_v @ W_ih)^T."""
    torch.manual_seed(0)
    rim = RIM(5, num_units=1, unit_size=8, top_k=1, input_value_size=10, communicate=False,
              input_attention=False).double()  # fmt: skip
    cell = rim.layers[0]
    lstm = torch.nn.LSTM(5, 8).double()
    order = torch.cat([torch.arange(0, 16), torch.arange(24, 32), torch.arange(16, 24)])  # i f o c -> i f c o
    with torch.no_grad():
        lstm.weight_ih_l0.copy_((cell.input_attention.value_weight @ cell.weight_ih[0]).T[order])
        lstm.weight_hh_l0.copy_(cell.weight_hh[0].T[order])
        lstm.bias_ih_l0.copy_(cell.bias_ih[0][order])
        lstm.bias_hh_l0.copy_(cell.bias_hh[0][order])
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    hx = (torch.randn(1, 3, 8, dtype=torch.float64), torch.randn(1, 3, 8, dtype=torch.float64))
    for training in (True, False):  # attention dropout (p=0.1) draws masks in training: set it off
        rim.train(training)
        rim.layers[0].input_attention.dropout = 0.0
        output, (h_n, c_n) = rim(x, hx)
        expected, (h_lstm, c_lstm) = lstm(x, hx)
        torch.testing.assert_close(output, expected)
        torch.testing.assert_close(h_n, h_lstm)
        torch.testing.assert_close(c_n, c_lstm)
    assert rim.last_active.all()


def test_without_input_attention_auto_runs_the_pytorch_path(monkeypatch):
    from rim_agents.nn import rim as rim_module

    def refuse(*args, **kwargs):
        raise AssertionError("input_attention=False must not reach the native op")

    monkeypatch.setattr(rim_module, "_native_layer", refuse)
    model = RIM(5, num_units=2, unit_size=4, top_k=2, input_attention=False, backend="auto")
    output, _ = model(torch.randn(4, 3, 5))
    assert output.shape == (4, 3, 8) and model.last_active.all()
    output.sum().backward()
    assert "input_attention=False" in repr(model)


def test_cuda_graphs_on_the_cpu_runs_the_eager_call():
    graphed, plain = small_rim(cuda_graphs=True), small_rim()
    x = torch.randn(6, 3, 5)
    with torch.no_grad():
        out, (h_n, c_n) = graphed(x, episode_starts=make_starts(6, 3))
        ref, (ref_h, ref_c) = plain(x, episode_starts=make_starts(6, 3))
    assert len(graphed._graphs) == 0  # nothing recorded off CUDA
    assert torch.equal(out, ref) and torch.equal(h_n, ref_h) and torch.equal(c_n, ref_c)
    assert "cuda_graphs=True" in repr(graphed)
