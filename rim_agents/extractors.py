"""Features extractors for the environments rim_agents trains on.

Symbols:
    N - batch    C - channels (3 in MiniGrid: object, colour, state; 4-10 in MinAtar: kinds of object)
    H, W - grid size
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, is_image_space_channels_first
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN
from torch import nn

# Three 2x2 convolutions without padding shrink each side by 3; with padding 1 each grows it by 1.
_MIN_GRID_SIDE = 4
# Values each MiniGrid symbolic code takes: objects (minigrid.core.constants.OBJECT_TO_IDX),
# colours (COLOR_TO_IDX), states (STATE_TO_IDX's 3 door states, or the agent's 4 directions).
_CODE_SIZES = (11, 6, 4)


class MiniGridCNN(BaseFeaturesExtractor):
    """
    Small CNN for MiniGrid's symbolic grid observations (``ImgObsWrapper``: a ``7x7x3``
    uint8 grid of object, colour and state indices; larger grids with full observability).

    Three 2x2 convolutions (16, 32, 64 channels, ReLU) then a linear layer to
    ``features_dim`` (ReLU), the architecture of MiniGrid's own Stable-Baselines3 training
    guide (https://minigrid.farama.org/content/training/, ``MinigridFeaturesExtractor``,
    taken from lcswillems/rl-starter-files). Atari's ``NatureCNN`` needs at least 36x36
    inputs and does not fit a 7x7 grid.

    The values are indices, not intensities, so they must reach the network unscaled:
    pass ``normalize_images=False`` in ``policy_kwargs`` (for the RIM and the LSTM policies
    alike). With SB3's default ``normalize_images=True`` the indices arrive divided by 255;
    ``forward`` detects that (non-integer inputs) and raises a ValueError.

    Channels-last spaces such as MiniGrid's own ``(7, 7, 3)`` are accepted as well as the
    channels-first ``(3, 7, 7)`` that SB3's ``VecTransposeImage`` produces; the channel axis
    is the smallest one, as SB3 assumes. Grids smaller than 4x4 (a 3x3 view, ``view_size``
    in ``envs.minigrid``) are padded by one cell at each convolution instead, so that the
    three convolutions still see every cell.

    ``one_hot=True`` turns each cell's three codes into one-hot channels (11 objects, 6
    colours, 4 states: the 3 door states, or the agent's direction in a fully observable
    grid), 21 channels in all, before the convolutions. A key (object 5) and a ball (6) then
    differ in two whole channels rather than by one unit in one channel, which is the
    difference a Memory task's cue comes down to.

    :param observation_space: a 3-D ``Box`` (a grid of any size)
    :param features_dim: number of features produced (default 64)
    :param one_hot: one-hot encode the object, colour and state codes (needs 3 channels)
    """

    def __init__(
        self, observation_space: spaces.Space, features_dim: int = 64, one_hot: bool = False
    ) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(
                "MiniGridCNN needs a 3-D Box observation space (a MiniGrid grid, e.g. from "
                f"minigrid.wrappers.ImgObsWrapper), got {observation_space}"
            )
        if isinstance(features_dim, bool) or not isinstance(features_dim, int) or features_dim < 1:
            raise ValueError(f"features_dim must be a positive integer, got {features_dim!r}")
        super().__init__(observation_space, features_dim)
        self.channels_first = is_image_space_channels_first(observation_space)
        shape = observation_space.shape
        n_channels, height, width = shape if self.channels_first else (shape[2], shape[0], shape[1])
        self.one_hot = bool(one_hot)
        if self.one_hot:
            if n_channels != len(_CODE_SIZES):
                raise ValueError(
                    f"one_hot=True needs MiniGrid's {len(_CODE_SIZES)} codes per cell (object, colour, "
                    f"state), got {n_channels} channels in {observation_space}"
                )
            n_channels = sum(_CODE_SIZES)
        padding = 1 if min(height, width) < _MIN_GRID_SIDE else 0
        self.cnn = nn.Sequential(
            nn.Conv2d(n_channels, 16, kernel_size=2, padding=padding),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=2, padding=padding),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=2, padding=padding),
            nn.ReLU(),
            nn.Flatten(),
        )
        grow = 3 if padding else -3  # each 2x2 convolution: side + 2 * padding - 1
        n_flatten = 64 * (height + grow) * (width + grow)
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """
        :param observations: ``(N, C, H, W)`` or ``(N, H, W, C)`` as the observation space,
            float, with the raw integer indices
        :return: ``(N, features_dim)``
        """
        if not th.equal(observations, observations.round()):
            raise ValueError(
                "MiniGridCNN received non-integer observations: symbolic MiniGrid grids hold "
                "integer indices, so these were most likely divided by 255; pass "
                "normalize_images=False in policy_kwargs"
            )
        if not self.channels_first:
            # (N, H, W, C) -> (N, C, H, W), the layout Conv2d expects.
            observations = observations.permute(0, 3, 1, 2)
        if self.one_hot:
            observations = _one_hot_codes(observations)
        return self.linear(self.cnn(observations))


def _one_hot_codes(observations: th.Tensor) -> th.Tensor:
    """``(N, 3, H, W)`` integer codes -> ``(N, 21, H, W)`` one-hot channels, object then colour then state."""
    codes = observations.long()
    for channel, size in enumerate(_CODE_SIZES):
        code = codes[:, channel]
        if code.min() < 0 or code.max() >= size:
            raise ValueError(
                f"MiniGridCNN(one_hot=True): channel {channel} holds codes outside 0..{size - 1} "
                f"({int(code.min())}..{int(code.max())}); the observation is not MiniGrid's symbolic encoding"
            )
    planes = [nn.functional.one_hot(codes[:, c], size) for c, size in enumerate(_CODE_SIZES)]
    return th.cat(planes, dim=-1).permute(0, 3, 1, 2).to(observations.dtype)


class MinAtarCNN(BaseFeaturesExtractor):
    """
    The network of MinAtar's own agents for its (C, 10, 10) binary game states: one 3x3
    convolution with 16 channels (stride 1, no padding, ReLU), then a linear layer to
    ``features_dim`` = 128 units (ReLU): Young & Tian (2019, arXiv 1903.03176),
    the DQN and actor-critic networks of the MinAtar paper and its ``examples/``.

    The input is channels-first, as ``envs.minatar`` gives it: ``float32`` values in {0, 1},
    which SB3 does not rescale (a float Box is not an image to it).

    :param observation_space: a (C, H, W) ``Box`` with H, W >= 3 (MinAtar: (C, 10, 10))
    :param features_dim: number of features produced (default 128, MinAtar's hidden layer)
    """

    def __init__(self, observation_space: spaces.Space, features_dim: int = 128) -> None:
        shape = getattr(observation_space, "shape", None)
        if not isinstance(observation_space, spaces.Box) or shape is None or len(shape) != 3:
            raise ValueError(
                f"MinAtarCNN needs a 3-D (C, H, W) Box observation space (envs.minatar), "
                f"got {observation_space}"
            )
        if min(shape[1:]) < 3:
            raise ValueError(f"MinAtarCNN needs H, W >= 3 for its 3x3 convolution, got (C, H, W) = {shape}")
        if isinstance(features_dim, bool) or not isinstance(features_dim, int) or features_dim < 1:
            raise ValueError(f"features_dim must be a positive integer, got {features_dim!r}")
        super().__init__(observation_space, features_dim)
        n_channels, height, width = shape
        self.cnn = nn.Sequential(
            nn.Conv2d(n_channels, 16, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        # A 3x3 convolution without padding shrinks each side by 2: (16, H - 2, W - 2) flattened.
        self.linear = nn.Sequential(nn.Linear(16 * (height - 2) * (width - 2), features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """
        :param observations: ``(N, C, H, W)`` float
        :return: ``(N, features_dim)``
        """
        return self.linear(self.cnn(observations))


class ScaledFlatten(BaseFeaturesExtractor):
    """
    SB3's ``FlattenExtractor`` times a constant: ``features = scale * flatten(obs)``.

    A fixed input scale for vector observations, with no weights of its own. Multiplying the
    input by ``scale`` multiplies the recurrent cell's input term by ``scale`` at
    initialisation (and that term's gradient with it). That is how the RepeatFirst ablations
    (docs/results.md) give sb3-contrib's LSTM the input drive of a RIM unit. POPGym's one-hot
    observations drive an ``nn.LSTM`` at PyTorch's default initialisation about 8x more weakly
    (standard deviation) than a RIM unit's ``W_value @ W_ih``.

    :param observation_space: any Box (flattened as SB3 does)
    :param scale: the constant, a positive number
    """

    def __init__(self, observation_space: spaces.Space, scale: float = 1.0) -> None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        super().__init__(observation_space, get_flattened_obs_dim(observation_space))
        self.scale = float(scale)
        self.flatten = nn.Flatten()

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """
        :param observations: ``(N, *obs_shape)`` float
        :return: ``(N, prod(obs_shape))``
        """
        return self.flatten(observations) * self.scale


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies BF16 natively (AVX512-BF16 or AMX-BF16; Linux's /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class FastNatureCNN(NatureCNN):
    """
    SB3's ``NatureCNN`` (Mnih et al., 2015: the Atari network of the paper, the zoo and CleanRL),
    with the same layers and parameter names, so a state dict moves between the two, computed
    the way the hardware is fastest:

    - ``channels_last``: the convolutions' weights and input in NHWC memory format, oneDNN's
      native layout on a CPU (no reorder per call). The numbers differ from NCHW's only in
      summation order.
    - ``bf16``: the network under ``torch.autocast`` with ``bfloat16`` (features returned as
      float32; the recurrent core and heads stay float32). Changes what is learned, so it is off
      by default and offered as a measured option (docs/atari.md). On a CPU without native BF16
      (``cpu_has_native_bf16``) it would be emulated and slower, so it is ignored there with a
      warning.

    :param observation_space: a channels-first image ``Box``, as for ``NatureCNN``
    :param features_dim: features produced (512, as in ``NatureCNN``)
    :param normalized_image: as in ``NatureCNN``
    :param channels_last: compute in NHWC memory format
    :param bf16: compute under BF16 autocast where the device has it natively
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        features_dim: int = 512,
        normalized_image: bool = False,
        channels_last: bool = True,
        bf16: bool = False,
    ) -> None:
        for name, value in (("channels_last", channels_last), ("bf16", bf16)):
            if not isinstance(value, bool):
                raise ValueError(f"FastNatureCNN {name} must be True or False, got {value!r}")
        super().__init__(observation_space, features_dim, normalized_image)
        self.channels_last = channels_last
        self.bf16 = bf16
        if bf16 and not cpu_has_native_bf16():
            warnings.warn(
                "FastNatureCNN(bf16=True) computes in float32 on this CPU, which has no native BF16 "
                "(avx512_bf16 or amx_bf16); on a GPU it uses BF16",
                stacklevel=2,
            )

    def forward(self, observations: th.Tensor) -> th.Tensor:
        """
        :param observations: ``(N, C, H, W)`` float, already scaled by SB3's preprocessing
        :return: ``(N, features_dim)`` float32
        """
        if self.channels_last:
            if not next(self.cnn.parameters()).is_contiguous(memory_format=th.channels_last):
                # Here, not in __init__: SB3's orthogonal initialisation needs contiguous weights.
                # The parameters stay the same objects, so the optimizer keeps them.
                self.cnn.to(memory_format=th.channels_last)  # type: ignore[call-overload]  # not in the stubs
            observations = observations.contiguous(memory_format=th.channels_last)
        with th.autocast(observations.device.type, dtype=th.bfloat16, enabled=self._use_bf16(observations)):
            features = self.linear(self.cnn(observations))
        return features.float()

    def _use_bf16(self, observations: th.Tensor) -> bool:
        return self.bf16 and (observations.device.type != "cpu" or cpu_has_native_bf16())
