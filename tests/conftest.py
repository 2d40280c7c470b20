"""Test-wide settings."""

import os

import torch

# The suite's tensors are small: one thread is faster than two, and it keeps OpenMP from
# spinning against other processes on a shared 2-core machine (that cost nn.LSTM 10x here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)
