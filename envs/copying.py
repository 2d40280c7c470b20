"""Data for the copying task (Goyal et al., ICLR 2021, arXiv 1909.10893, section 4.1 and Table 1).

The task, stated exactly: ten digits drawn uniformly from 1..8, then ``gap`` blanks (0), then the
delimiter 9, then 9 more blanks while the model must output the ten digits; total length
``gap + 20``. The model reads one token per step and must emit blank (0) at every step before the
delimiter and the ten digits, in order, at the last ten steps (the delimiter step and the nine
blanks after it).

Position legend for one sequence (``L = gap + 20``)::

    index   0 .. 9       10 .. gap+9     gap+10      gap+11 .. gap+19
    input   d0 .. d9     0 .. 0          9           0 .. 0
    target  0  .. 0      0 .. 0          d0          d1 .. d9

The official code (``event_based/copying_data.py`` in anirudh9119/RIMs) puts ``gap - 1`` blanks
before the delimiter and starts the output one step after it; the distance from the last digit to
the first output is ``gap + 1`` steps in both versions, and the total length is the same.

Shapes are time-major like ``torch.nn.LSTM`` (``batch_first=False``):

    L - sequence length (gap + 20)
    N - batch size
"""

from __future__ import annotations

import torch as th

NUM_DIGITS = 10
"""How many digits the model must remember and copy."""
BLANK = 0
"""Input token during the gap and after the delimiter; target token everywhere but the recall."""
DELIMITER = 9
"""Input token that tells the model to start copying."""
DIGIT_LOW, DIGIT_HIGH = 1, 8
"""Digits are drawn uniformly from DIGIT_LOW..DIGIT_HIGH inclusive."""
VOCAB_SIZE = 10
"""Input tokens are 0..9 (blank, the digits, the delimiter)."""
NUM_CLASSES = 9
"""Target tokens are 0..8 (blank and the digits; the delimiter is never a target)."""


def sequence_length(gap: int) -> int:
    """
    Number of steps in one copying sequence.

    :param gap: number of blanks between the last digit and the delimiter
    :return: ``gap + 20``
    """
    return gap + 2 * NUM_DIGITS


def recall_slice(gap: int) -> slice:
    """
    Time indices at which the model must output the digits (the last ten steps).

    :param gap: number of blanks between the last digit and the delimiter
    :return: ``slice(gap + 10, gap + 20)``
    """
    return slice(gap + NUM_DIGITS, gap + 2 * NUM_DIGITS)


def copying_batch(
    batch_size: int,
    gap: int,
    generator: th.Generator | None = None,
    device: th.device | str | None = None,
) -> tuple[th.Tensor, th.Tensor]:
    """
    Draw one batch of copying sequences.

    The digits are drawn on the CPU with ``generator`` so that a seed gives the same batch on
    every device; the result is then moved to ``device``.

    :param batch_size: number of sequences N
    :param gap: number of blanks between the last digit and the delimiter
    :param generator: source of randomness; ``th.Generator().manual_seed(seed)`` makes the batch
        a function of ``seed``. ``None`` uses torch's global generator.
    :param device: where to put the tensors (default CPU)
    :return: ``(inputs, targets)``, both int64 of shape (L, N) with ``L = gap + 20``; inputs are in
        0..9, targets in 0..8 and ``targets[-10:] == inputs[:10]``
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if gap < 1:
        raise ValueError(f"gap must be a positive integer, got {gap!r}")
    length = sequence_length(gap)
    # (NUM_DIGITS, N): the digits to remember, drawn once and written into both tensors
    digits = th.randint(DIGIT_LOW, DIGIT_HIGH + 1, (NUM_DIGITS, batch_size), generator=generator)
    inputs = th.full((length, batch_size), BLANK, dtype=th.int64)
    targets = th.full((length, batch_size), BLANK, dtype=th.int64)
    inputs[:NUM_DIGITS] = digits
    inputs[gap + NUM_DIGITS] = DELIMITER
    targets[recall_slice(gap)] = digits
    return inputs.to(device), targets.to(device)
