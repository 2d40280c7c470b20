"""Rollout buffers for RIM policies: minibatches of whole episodes packed into lanes.

sb3-contrib's ``RecurrentRolloutBuffer`` cuts every episode into its own sequence and pads
each minibatch's sequences to the longest one: its LSTM runs a sequence in one ``nn.LSTM``
call only when no episode starts inside it (else it loops over the steps in Python). A RIM
resets its state inside its own time loop
(``episode_starts``), so several episodes can share one lane of the batch, one after the
other. The buffers here keep sb3-contrib's storage and sample format (sequence-major
``(n_lanes * L, ...)`` tensors, the states before each lane's first step, a mask) and
change only the layout of a minibatch:

1. Pieces. A rollout's steps are cut into pieces at every episode start and at each
   env's first step; the pieces are shuffled, and their steps, in time order within each
   piece, are dealt into minibatches of exactly ``batch_size`` steps (as in SB3). A piece
   that crosses a minibatch boundary is split there; its tail continues from the state
   stored during the rollout, as sb3-contrib does at its boundaries.
2. Lanes. Each minibatch is packed into lanes of ``L`` = its longest piece: pieces that
   continue an episode (their first step is not an episode start) open a lane each, as
   only a lane's first step can take a stored state; the others go, longest first, into
   the first lane with room (first-fit decreasing). A piece that starts an episode resets
   the state wherever it lands, so the lane computes exactly what the rollout did.
3. The mask covers only the slots left empty at the ends of lanes.

``batch_size`` keeps its SB3 meaning, real steps per minibatch (the last one is smaller
when it does not divide ``n_envs * n_steps``); the number of lanes follows from the
packing, about ``batch_size / L``. docs/minibatches.md has the measurements behind the
layout.

Symbols:
    E    - environments (``n_envs``)
    T    - steps per environment and rollout (``n_steps``)
    N    - all steps of a rollout, ``E * T``, flattened env-major: index ``e * T + t``
    L    - lane length of a minibatch (its longest piece)
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch as th
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.type_aliases import (
    RecurrentDictRolloutBufferSamples,
    RecurrentRolloutBufferSamples,
    RNNStates,
)

# Per-step arrays a minibatch gathers, besides the observations.
_STEP_FIELDS = ("actions", "values", "log_probs", "advantages", "returns", "episode_starts")
_STATE_FIELDS = ("hidden_states_pi", "cell_states_pi", "hidden_states_vf", "cell_states_vf")


def pack_lanes(lengths: np.ndarray, continues: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Place the pieces of one minibatch into lanes as long as its longest piece.

    :param lengths: ``(P,)`` steps of each piece
    :param continues: ``(P,)`` True where a piece continues an episode from a stored state
        (it must open a lane)
    :return: the lane of each piece ``(P,)``, its first column ``(P,)``, and the number of lanes
    """
    lane_length = int(lengths.max())
    lane = np.empty(len(lengths), dtype=np.int64)
    column = np.empty(len(lengths), dtype=np.int64)
    room = np.empty(len(lengths), dtype=np.int64)
    n_lanes = 0
    # Continuing pieces first (each opens a lane), then the rest longest first.
    for piece in np.lexsort((-lengths, ~continues)):
        length = lengths[piece]
        fits = room[:n_lanes] >= length
        first = int(fits.argmax()) if n_lanes else 0
        if continues[piece] or not n_lanes or not fits[first]:
            first = n_lanes
            room[first] = lane_length
            n_lanes += 1
        lane[piece] = first
        column[piece] = lane_length - room[first]
        room[first] -= length
    return lane, column, n_lanes


def lane_layout(
    episode_starts: np.ndarray, batch_size: int | None, max_lane_length: int | None = None
) -> list[np.ndarray]:
    """Deal a rollout's pieces into shuffled minibatches and pack each into lanes.

    Shuffles with numpy's global generator, as SB3's buffers do (``set_random_seed`` seeds it).

    :param episode_starts: ``(E, T)``, nonzero where a step starts an episode
    :param batch_size: steps per minibatch; None for the whole rollout in one minibatch
    :param max_lane_length: also cut every env's steps at ``t = 0, m, 2m, ...``, so no piece
        (and so no lane) is longer than ``m``: truncated backpropagation through time over ``m``
        steps, each piece starting from the state stored during the rollout. None: pieces end
        only at episode starts and rollout ends.
    :return: one ``(n_lanes, L)`` array per minibatch of env-major step indices; the slots
        no step fills hold ``N``
    """
    n_envs, n_steps = episode_starts.shape
    total = n_envs * n_steps
    starts = episode_starts.reshape(-1) != 0
    cut = starts.copy()
    # every env's first step opens a piece, and every max_lane_length-th step after it
    cut[np.arange(total) % n_steps % (max_lane_length or n_steps) == 0] = True
    piece_starts = np.flatnonzero(cut)
    piece_lengths = np.diff(np.append(piece_starts, total))

    # All steps in shuffled piece order, each piece in time order: (N,) indices.
    shuffled = np.random.permutation(len(piece_starts))
    lengths = piece_lengths[shuffled]
    offsets = np.cumsum(lengths) - lengths
    order = np.repeat(piece_starts[shuffled] - offsets, lengths) + np.arange(total)

    layouts = []
    batch_size = total if batch_size is None else batch_size
    for begin in range(0, total, batch_size):
        steps = order[begin : begin + batch_size]
        opens = cut[steps]
        opens[0] = True  # the minibatch boundary splits a piece: its tail opens one here
        first_step = np.flatnonzero(opens)
        lengths = np.diff(np.append(first_step, len(steps)))
        lane, column, n_lanes = pack_lanes(lengths, ~starts[steps[first_step]])
        # Every step goes to its piece's lane, at the piece's column plus its position in it.
        piece = np.cumsum(opens) - 1
        position = np.arange(len(steps)) - first_step[piece]
        layout = np.full((n_lanes, int(lengths.max())), total, dtype=np.int64)
        layout[lane[piece], column[piece] + position] = steps
        layouts.append(layout)
    return layouts


class _LaneSampling:
    """Minibatch sampling shared by the box and the dict buffer: the rollout, flattened
    env-major as torch tensors with one zero row at index ``N`` for empty slots, gathered
    by :func:`lane_layout`."""

    buffer_size: int
    n_envs: int
    full: bool
    generator_ready: bool
    device: th.device
    episode_starts: np.ndarray
    max_lane_length: int | None = None  # see lane_layout; RimPPO sets it
    # Keep (C, H, W) image observations in NHWC memory order, so that each minibatch reaches a
    # channels_last pixel network (FastNatureCNN) without a reorder: RimPPO sets it for one.
    channels_last_images: bool = False

    def _pad_row(self, array: np.ndarray) -> th.Tensor:
        """``(T, E, ...)`` -> ``(N + 1, ...)``: env-major, with a zero row for empty slots."""
        flat = array.swapaxes(0, 1).reshape(self.buffer_size * self.n_envs, *array.shape[2:])
        padded = np.concatenate([flat, np.zeros((1, *flat.shape[1:]), dtype=flat.dtype)])
        return th.as_tensor(padded, device=self.device)

    def _prepare(self) -> None:
        self._steps = {name: self._pad_row(getattr(self, name)) for name in _STEP_FIELDS}
        # (T, layers, E, H) -> (T, E, layers, H) -> (N + 1, layers, H)
        self._states = {name: self._pad_row(getattr(self, name).swapaxes(1, 2)) for name in _STATE_FIELDS}

    def _layouts(self, batch_size: int | None) -> list[np.ndarray]:
        assert self.full, "Rollout buffer must be full before sampling from it"
        if not self.generator_ready:
            self._prepare()
            self.generator_ready = True
        return lane_layout(self.episode_starts.swapaxes(0, 1), batch_size, self.max_lane_length)

    def _sample_fields(self, layout: np.ndarray) -> dict[str, Any]:
        """The fields of a sample except the observations, for a ``(n_lanes, L)`` layout."""
        slots = th.as_tensor(layout.reshape(-1), device=self.device)
        lane_starts = th.as_tensor(layout[:, 0], device=self.device)
        # (n_lanes, layers, H) -> (layers, n_lanes, H)
        states = {
            name: tensor[lane_starts].swapaxes(0, 1).contiguous() for name, tensor in self._states.items()
        }
        steps = {name: tensor[slots] for name, tensor in self._steps.items()}
        total = self.buffer_size * self.n_envs
        return dict(
            actions=steps["actions"],
            old_values=steps["values"],
            old_log_prob=steps["log_probs"],
            advantages=steps["advantages"],
            returns=steps["returns"],
            lstm_states=RNNStates(
                (states["hidden_states_pi"], states["cell_states_pi"]),
                (states["hidden_states_vf"], states["cell_states_vf"]),
            ),
            episode_starts=steps["episode_starts"],
            mask=(slots < total).float(),
        )


class RimRolloutBuffer(_LaneSampling, RecurrentRolloutBuffer):
    """
    ``RecurrentRolloutBuffer`` whose minibatches pack whole episodes into lanes without
    padding waste (see the module docstring). ``RimPPO`` gives it to RIM policies only:
    sb3-contrib's LSTM policy would fall back to its per-step loop on every lane, and the
    LSTM baseline stays sb3-contrib's own. Parameters as in sb3-contrib's.
    """

    def get(  # type: ignore[override]  # the samples are sb3-contrib's
        self, batch_size: int | None = None
    ) -> Generator[RecurrentRolloutBufferSamples, None, None]:
        """
        :param batch_size: steps per minibatch; None for the whole rollout at once
        :return: the minibatches of one epoch, ``(n_lanes * L, ...)`` sequence-major
        """
        for layout in self._layouts(batch_size):
            slots = th.as_tensor(layout.reshape(-1), device=self.device)
            yield RecurrentRolloutBufferSamples(
                observations=self._observations[slots], **self._sample_fields(layout)
            )

    def _prepare(self) -> None:
        super()._prepare()
        self._observations = self._pad_row(self.observations)
        if self.channels_last_images and self._observations.dim() == 4:
            # (N + 1, C, H, W) in NHWC order: a minibatch gathered from it keeps that order
            self._observations = self._observations.contiguous(memory_format=th.channels_last)


class RimDictRolloutBuffer(_LaneSampling, RecurrentDictRolloutBuffer):
    """
    ``RecurrentDictRolloutBuffer`` (dict observations) whose minibatches pack whole
    episodes into lanes without padding waste, as :class:`RimRolloutBuffer`.
    """

    def get(  # type: ignore[override]  # the samples are sb3-contrib's
        self, batch_size: int | None = None
    ) -> Generator[RecurrentDictRolloutBufferSamples, None, None]:
        """
        :param batch_size: steps per minibatch; None for the whole rollout at once
        :return: the minibatches of one epoch, ``(n_lanes * L, ...)`` sequence-major
        """
        for layout in self._layouts(batch_size):
            slots = th.as_tensor(layout.reshape(-1), device=self.device)
            yield RecurrentDictRolloutBufferSamples(
                observations={key: obs[slots] for key, obs in self._observations.items()},
                **self._sample_fields(layout),
            )

    def _prepare(self) -> None:
        super()._prepare()
        self._observations = {key: self._pad_row(obs) for key, obs in self.observations.items()}
