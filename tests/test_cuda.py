"""The RIM on CUDA: the PyTorch path against the CPU, and replayed CUDA graphs against eager calls.

Skipped where no GPU is present (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

import copy

import pytest
import torch

from tests.reference_rim import reference_forward
from tests.test_rim import make_starts, small_rim

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("communication", ["gated", "off"])
def test_the_pytorch_path_on_cuda_matches_the_reference_on_the_cpu(cell, communication):
    read = {} if communication == "gated" else {"communicate": False}
    rim = small_rim(cell=cell, num_layers=2, **read).double()
    torch.manual_seed(1)
    x = torch.randn(9, 3, 5, dtype=torch.float64)
    hx = (torch.randn(2, 3, 32, dtype=torch.float64), torch.randn(2, 3, 32, dtype=torch.float64))
    starts = make_starts(9, 3)
    ref_out, (ref_h, _), ref_active = reference_forward(rim, x, hx, episode_starts=starts)
    ref_grads = torch.autograd.grad(ref_out.pow(2).sum() + ref_h.sum(), list(rim.parameters()))

    gpu = copy.deepcopy(rim).to(CUDA)
    out, (h_n, _) = gpu(x.to(CUDA), (hx[0].to(CUDA), hx[1].to(CUDA)), episode_starts=starts.to(CUDA))
    grads = torch.autograd.grad(out.pow(2).sum() + h_n.sum(), list(gpu.parameters()))
    assert torch.equal(gpu.last_active.cpu(), ref_active)
    torch.testing.assert_close(out.cpu(), ref_out, atol=1e-9, rtol=1e-9)
    for gpu_grad, ref_grad in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(gpu_grad.cpu(), ref_grad, atol=1e-9, rtol=1e-9)


def _rollout(rim, xs, starts):
    """Step ``rim`` through ``xs`` one step per call without autograd, as a rollout does."""
    batch = xs.shape[1]
    state = (xs.new_zeros(rim.num_layers, batch, rim.hidden_size),) * 2
    outputs, actives = [], []
    with torch.no_grad():
        for x, start in zip(xs, starts, strict=True):
            out, state = rim(x.unsqueeze(0), state, episode_starts=start.unsqueeze(0))
            outputs.append(out)
            actives.append(rim.last_active)
    return torch.cat(outputs), state, torch.cat(actives)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_replayed_graphs_equal_eager_calls_step_after_step(cell):
    eager = small_rim(cell=cell, num_layers=2).to(CUDA)
    graphed = copy.deepcopy(eager)
    graphed.cuda_graphs = True
    torch.manual_seed(2)
    xs, starts = torch.randn(12, 4, 5, device=CUDA), (torch.rand(12, 4, device=CUDA) < 0.2).float()
    out, (h, c), active = _rollout(eager, xs, starts)
    g_out, (g_h, g_c), g_active = _rollout(graphed, xs, starts)
    assert len(graphed._graphs) == 1  # one shape: recorded once, replayed 12 times
    assert torch.equal(g_active, active)
    for a, b in ((g_out, out), (g_h, h), (g_c, c)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_replays_see_optimizer_steps_and_new_tensors_record_again():
    graphed = small_rim().to(CUDA)
    graphed.cuda_graphs = True
    x = torch.randn(1, 4, 5, device=CUDA)
    with torch.no_grad():
        before = graphed(x)[0]
    optimizer = torch.optim.SGD(graphed.parameters(), lr=0.5)
    graphed(torch.randn(7, 4, 5, device=CUDA))[0].pow(2).sum().backward()  # autograd: eager
    optimizer.step()
    assert len(graphed._graphs) == 1
    eager = copy.deepcopy(graphed)
    eager.cuda_graphs = False
    with torch.no_grad():
        after, expected = graphed(x)[0], eager(x)[0]
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, expected, atol=1e-6, rtol=1e-6)
    graphed.double()  # new parameter tensors: the old graphs are dropped
    assert len(graphed._graphs) == 0
    with torch.no_grad():
        graphed(x.double())
        graphed(torch.randn(1, 8, 5, device=CUDA, dtype=torch.float64))
    assert len(graphed._graphs) == 2


def test_training_mode_dropout_and_autograd_run_eagerly():
    rim = small_rim(input_dropout=0.5).to(CUDA).train()
    rim.cuda_graphs = True
    with torch.no_grad():
        rim(torch.randn(3, 2, 5, device=CUDA))
    rim(torch.randn(3, 2, 5, device=CUDA))
    assert len(rim._graphs) == 0
    rim.eval()
    with torch.no_grad():
        rim(torch.randn(3, 2, 5, device=CUDA))
    assert len(rim._graphs) == 1
