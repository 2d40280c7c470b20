"""RecurrentPPO policies whose recurrent core is a RIM instead of an LSTM.

sb3-contrib's :class:`RecurrentActorCriticPolicy` builds ``lstm_actor`` (and, with
``enable_critic_lstm``, ``lstm_critic``) as ``nn.LSTM``; the policies here swap them for
:class:`rim_agents.nn.RIM` and run it once over each padded training sequence, with the
episode starts reset inside the RIM's single time loop. Everything else (RecurrentPPO,
its rollout buffer, ``predict`` with state, ``save`` / ``load``) stays sb3-contrib's.

Symbols:
    n_seq - sequences (envs during rollouts, padded sequences during training)
    L     - time steps per sequence (1 during rollouts)
    D     - features from the features extractor
"""

from __future__ import annotations

import inspect
from typing import Any

import torch as th
from einops import rearrange
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
)
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from rim_agents.nn import RIM

_RIM_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(RIM).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
# RIM arguments the policy sets itself, and the sb3-contrib option that controls each.
_RIM_KWARGS_SET_BY_POLICY = {
    "input_size": "the features extractor's features_dim",
    "num_layers": "n_lstm_layers",
    "batch_first": "sb3-contrib's time-major layout (always False)",
}
# RIM dropouts the policies set to 0 unless rim_kwargs gives them (see resolve_rim_kwargs).
_POLICY_ZERO_DROPOUTS = ("input_dropout", "comm_dropout")
# nn.LSTM keyword arguments a RIM can only honour at the value it has built in.
_LSTM_KWARGS_RIM_MATCHES: dict[str, Any] = {
    "bias": True,
    "batch_first": False,
    "bidirectional": False,
    "proj_size": 0,
    "device": None,
    "dtype": None,
}


class ConflictingOptionsError(ValueError, AssertionError):
    """Policy options that cannot be combined.

    A ``ValueError``, as a bad argument is here; also an ``AssertionError`` because
    sb3-contrib's LSTM policy reports the same conflicts with ``assert``, and code written
    against it (a drop-in swap must keep working) catches that.
    """


def resolve_rim_kwargs(
    rim_kwargs: dict[str, Any] | None,
    lstm_kwargs: dict[str, Any] | None,
    lstm_hidden_size: int | None,
) -> tuple[dict[str, Any], int]:
    """Merge the RIM hyperparameters with the LSTM options they must agree with.

    :param rim_kwargs: RIM keyword arguments given by the user.
    :param lstm_kwargs: ``nn.LSTM`` keyword arguments given by the user.
    :param lstm_hidden_size: hidden size given by the user, or None to derive it.
    :return: the RIM keyword arguments (without ``input_size`` / ``num_layers``) and the
        hidden size ``num_units * unit_size``.
    """
    if rim_kwargs is not None and not isinstance(rim_kwargs, dict):
        raise ValueError(f"rim_kwargs must be a dict of RIM arguments or None, got {rim_kwargs!r}")
    resolved = dict(rim_kwargs or {})
    for key, value in resolved.items():
        if key in _RIM_KWARGS_SET_BY_POLICY:
            raise ValueError(
                f"rim_kwargs must not contain {key!r} (got {value!r}): "
                f"it is set by {_RIM_KWARGS_SET_BY_POLICY[key]}"
            )
        if key not in _RIM_DEFAULTS:
            allowed = sorted(set(_RIM_DEFAULTS) - set(_RIM_KWARGS_SET_BY_POLICY))
            raise ValueError(f"rim_kwargs {key!r} is not a RIM argument; allowed: {allowed}")

    for key, value in (lstm_kwargs or {}).items():
        if key == "dropout":
            if "dropout" in resolved and resolved["dropout"] != value:
                raise ValueError(
                    f"lstm_kwargs dropout={value!r} conflicts with rim_kwargs "
                    f"dropout={resolved['dropout']!r}; set it in one place"
                )
            resolved["dropout"] = value
        elif key in _LSTM_KWARGS_RIM_MATCHES:
            if value != _LSTM_KWARGS_RIM_MATCHES[key]:
                raise ValueError(
                    f"lstm_kwargs {key}={value!r} is not supported by the RIM core: only "
                    f"{key}={_LSTM_KWARGS_RIM_MATCHES[key]!r} is"
                )
        else:
            raise ValueError(
                f"lstm_kwargs {key!r} is not an nn.LSTM argument the RIM core supports; allowed: "
                f"{['dropout', *_LSTM_KWARGS_RIM_MATCHES]}. RIM hyperparameters go in rim_kwargs"
            )

    # PPO's probability ratio compares log-probabilities from the rollout (eval mode) with
    # those of the update (train mode): attention dropout would make that ratio noisy, so
    # the policies default it to 0 (the paper's 0.1 is for supervised sequence tasks).
    for key in _POLICY_ZERO_DROPOUTS:
        resolved.setdefault(key, 0.0)

    num_units = resolved.get("num_units", _RIM_DEFAULTS["num_units"])
    unit_size = resolved.get("unit_size", _RIM_DEFAULTS["unit_size"])
    for key, value in (("num_units", num_units), ("unit_size", unit_size)):
        # Checked here, not only by RIM, because the hidden size is computed from them first.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"rim_kwargs {key} must be a positive integer, got {value!r}")
    hidden_size = num_units * unit_size
    if lstm_hidden_size is not None and lstm_hidden_size != hidden_size:
        raise ValueError(
            f"lstm_hidden_size={lstm_hidden_size} disagrees with the RIM hidden size num_units * unit_size = "
            f"{num_units} * {unit_size} = {hidden_size}; leave lstm_hidden_size unset (it is derived) or "
            "change rim_kwargs num_units / unit_size"
        )
    return resolved, hidden_size


class RimActorCriticPolicy(RecurrentActorCriticPolicy):
    """
    Recurrent actor-critic policy whose LSTM(s) are Recurrent Independent Mechanisms.
    To be used with ``RecurrentPPO`` (or :class:`rim_agents.ppo.RimPPO`).

    All sb3-contrib options keep their meaning; ``lstm_actor`` and ``lstm_critic`` are
    :class:`rim_agents.nn.RIM` modules whose ``last_active`` holds the active-unit masks
    of their last forward pass (during rollouts, ``(1, n_lstm_layers, n_envs, num_units)``).

    :param observation_space: Observation space
    :param action_space: Action space
    :param lr_schedule: Learning rate schedule (could be constant)
    :param net_arch: The specification of the policy and value networks (after the RIM).
    :param activation_fn: Activation function
    :param ortho_init: Whether to use or not orthogonal initialization (the RIM keeps its own)
    :param use_sde: Whether to use State Dependent Exploration or not
    :param log_std_init: Initial value for the log standard deviation
    :param full_std: Whether to use (n_features x n_actions) parameters
        for the std instead of only (n_features,) when using gSDE
    :param use_expln: Use ``expln()`` function instead of ``exp()`` to ensure
        a positive standard deviation (cf paper).
    :param squash_output: Whether to squash the output using a tanh function,
        this allows to ensure boundaries when using gSDE.
    :param features_extractor_class: Features extractor to use.
    :param features_extractor_kwargs: Keyword arguments to pass to the features extractor.
    :param share_features_extractor: If True, the features extractor is shared between the
        policy and value networks.
    :param normalize_images: Whether to normalize images or not, dividing by 255.0.
        Pass False with :class:`rim_agents.extractors.MiniGridCNN` (symbolic observations).
    :param optimizer_class: The optimizer to use, ``th.optim.Adam`` by default
    :param optimizer_kwargs: Additional keyword arguments, excluding the learning rate,
        to pass to the optimizer
    :param lstm_hidden_size: Hidden size of each RIM layer; must equal
        ``num_units * unit_size``. None (default) derives it from ``rim_kwargs``.
    :param n_lstm_layers: Number of stacked RIM layers (the RIM's ``num_layers``).
    :param shared_lstm: Whether the RIM is shared between the actor and the critic
        (in that case, only the actor gradient is used, unless ``detach_critic=False``).
    :param enable_critic_lstm: Use a separate RIM for the critic.
    :param lstm_kwargs: ``nn.LSTM`` keyword arguments: ``dropout`` is passed to the RIM;
        ``bias``, ``batch_first``, ``bidirectional``, ``proj_size``, ``device``, ``dtype`` are
        accepted only at the value the RIM has built in; anything else is a ValueError.
    :param rim_kwargs: Keyword arguments of :class:`rim_agents.nn.RIM` (``num_units``,
        ``unit_size``, ``top_k``, ``cell``, attention sizes, dropouts, ``communicate``);
        ``input_size``, ``num_layers`` and ``batch_first`` are set by the policy.
    :param detach_critic: with ``shared_lstm``, whether the value loss stops at the shared RIM
        (sb3-contrib's behaviour, the default) or trains it together with the policy loss:
        ``shared_lstm=True, enable_critic_lstm=False, detach_critic=False`` is the RIM paper's
        PPO (appendix D.8; Kostrikov's pytorch-a2c-ppo-acktr shares one recurrent base that
        both losses train), at half the recurrent work of a separate critic RIM.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lstm_hidden_size: int | None = None,
        n_lstm_layers: int = 1,
        shared_lstm: bool = False,
        enable_critic_lstm: bool = True,
        lstm_kwargs: dict[str, Any] | None = None,
        rim_kwargs: dict[str, Any] | None = None,
        detach_critic: bool = True,
    ):
        # sb3-contrib checks these with asserts after building; fail first, with an error that
        # callers of either library catch (see ConflictingOptionsError).
        if shared_lstm and enable_critic_lstm:
            raise ConflictingOptionsError(
                "shared_lstm=True and enable_critic_lstm=True conflict: choose a shared RIM "
                "(shared_lstm=True, enable_critic_lstm=False), a separate critic RIM, or none"
            )
        if shared_lstm and not share_features_extractor:
            raise ConflictingOptionsError(
                "shared_lstm=True requires share_features_extractor=True: "
                "the RIM cannot be shared if the features extractor is not"
            )
        if not isinstance(detach_critic, bool):
            raise ValueError(f"detach_critic must be True or False, got {detach_critic!r}")
        if not detach_critic and not shared_lstm:
            raise ConflictingOptionsError(
                "detach_critic=False needs shared_lstm=True (and enable_critic_lstm=False): it lets the "
                "value loss train the one RIM that actor and critic share"
            )
        if isinstance(n_lstm_layers, bool) or not isinstance(n_lstm_layers, int) or n_lstm_layers < 1:
            raise ValueError(f"n_lstm_layers must be a positive integer, got {n_lstm_layers!r}")
        resolved_rim_kwargs, hidden_size = resolve_rim_kwargs(rim_kwargs, lstm_kwargs, lstm_hidden_size)
        # The parent builds nn.LSTM cores (replaced below) and the heads sized by hidden_size;
        # lstm_kwargs are validated above and only meant for the RIM, so the LSTM gets none.
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            hidden_size,
            n_lstm_layers,
            shared_lstm,
            enable_critic_lstm,
            None,
        )
        self.lstm_kwargs = dict(lstm_kwargs or {})
        self.rim_kwargs = dict(rim_kwargs or {})
        self.detach_critic = detach_critic
        self.n_lstm_layers = n_lstm_layers
        resolved_rim_kwargs["num_layers"] = n_lstm_layers
        # sb3-contrib types these attributes as nn.LSTM; the RIM is its drop-in.
        self.lstm_actor = RIM(self.features_dim, **resolved_rim_kwargs)  # type: ignore[assignment]
        if self.enable_critic_lstm:
            self.lstm_critic = RIM(self.features_dim, **resolved_rim_kwargs)  # type: ignore[assignment]
        # The parent's optimizer holds the discarded LSTM parameters.
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            dict(
                share_features_extractor=self.share_features_extractor,
                lstm_hidden_size=self.lstm_output_dim,
                n_lstm_layers=self.n_lstm_layers,
                shared_lstm=self.shared_lstm,
                enable_critic_lstm=self.enable_critic_lstm,
                lstm_kwargs=self.lstm_kwargs,
                rim_kwargs=self.rim_kwargs,
                detach_critic=self.detach_critic,
            )
        )
        return data

    def _shared_latents(
        self, obs: th.Tensor, lstm_states: tuple[th.Tensor, ...], episode_starts: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, tuple[th.Tensor, th.Tensor]]:
        """
        The shared RIM's output through the actor's and the critic's MLP, without detaching
        (``detach_critic=False``).

        :return: actor latent, critic latent, the RIM states after the last step
        """
        features = self.extract_features(obs)
        assert isinstance(features, th.Tensor)  # shared_lstm requires share_features_extractor
        hidden, cell = lstm_states
        output, states = self._process_sequence(features, (hidden, cell), episode_starts, self.lstm_actor)
        return self.mlp_extractor.forward_actor(output), self.mlp_extractor.forward_critic(output), states

    def forward(  # type: ignore[override]  # sb3-contrib's signature, which differs from SB3's
        self,
        obs: th.Tensor,
        lstm_states: RNNStates,
        episode_starts: th.Tensor,
        deterministic: bool = False,
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, RNNStates]:
        """sb3-contrib's ``forward``; with ``detach_critic=False`` the value comes from the shared
        RIM's output itself, not its detached copy."""
        if self.detach_critic:
            return super().forward(obs, lstm_states, episode_starts, deterministic)
        latent_pi, latent_vf, states = self._shared_latents(obs, lstm_states.pi, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, self.value_net(latent_vf), log_prob, RNNStates(states, states)

    def predict_values(  # type: ignore[override]  # sb3-contrib's signature
        self, obs: th.Tensor, lstm_states: tuple[th.Tensor, th.Tensor], episode_starts: th.Tensor
    ) -> th.Tensor:
        """sb3-contrib's ``predict_values``; with ``detach_critic=False``, without the detach."""
        if self.detach_critic:
            return super().predict_values(obs, lstm_states, episode_starts)
        _, latent_vf, _ = self._shared_latents(obs, lstm_states, episode_starts)
        return self.value_net(latent_vf)

    def evaluate_actions(  # type: ignore[override]  # sb3-contrib's signature
        self, obs: th.Tensor, actions: th.Tensor, lstm_states: RNNStates, episode_starts: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        """sb3-contrib's ``evaluate_actions``; with ``detach_critic=False`` the value loss's
        gradient flows into the shared RIM and the features extractor."""
        if self.detach_critic:
            return super().evaluate_actions(obs, actions, lstm_states, episode_starts)
        latent_pi, latent_vf, _ = self._shared_latents(obs, lstm_states.pi, episode_starts)
        distribution = self._get_action_dist_from_latent(latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    @staticmethod
    def _process_sequence(  # type: ignore[override]  # sb3-contrib annotates the states as one Tensor
        features: th.Tensor,
        lstm_states: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor,
        lstm: nn.Module,
    ) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
        """
        Run the RIM once over every (padded) sequence, resetting states at episode starts
        inside its time loop, instead of sb3-contrib's Python loop over time steps.

        :param features: ``(n_seq * L, D)``, sequence-major (each sequence's steps contiguous)
        :param lstm_states: hidden and cell states before the first step, each
            ``(n_lstm_layers, n_seq, hidden_size)``
        :param episode_starts: ``(n_seq * L,)``, 1 where the state must be zeroed before the step
        :param lstm: the RIM to run
        :return: the RIM output ``(n_seq * L, hidden_size)`` and the states after the last step
        """
        n_seq = lstm_states[0].shape[1]
        features_sequence = rearrange(features, "(n l) d -> l n d", n=n_seq)
        episode_starts = rearrange(episode_starts, "(n l) -> l n", n=n_seq)
        output, lstm_states = lstm(features_sequence, lstm_states, episode_starts=episode_starts)
        return rearrange(output, "l n h -> (n l) h"), lstm_states


class RimActorCriticCnnPolicy(RimActorCriticPolicy):
    """
    :class:`RimActorCriticPolicy` with ``NatureCNN`` as the default features extractor
    (for Atari-like pixel observations; use :class:`rim_agents.extractors.MiniGridCNN`
    with ``normalize_images=False`` for MiniGrid's symbolic grids).
    Parameters as in :class:`RimActorCriticPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lstm_hidden_size: int | None = None,
        n_lstm_layers: int = 1,
        shared_lstm: bool = False,
        enable_critic_lstm: bool = True,
        lstm_kwargs: dict[str, Any] | None = None,
        rim_kwargs: dict[str, Any] | None = None,
        detach_critic: bool = True,
    ):
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            lstm_hidden_size,
            n_lstm_layers,
            shared_lstm,
            enable_critic_lstm,
            lstm_kwargs,
            rim_kwargs,
            detach_critic,
        )


class RimMultiInputActorCriticPolicy(RimActorCriticPolicy):
    """
    :class:`RimActorCriticPolicy` with ``CombinedExtractor`` as the default features
    extractor, for ``Dict`` observation spaces.
    Parameters as in :class:`RimActorCriticPolicy`.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lstm_hidden_size: int | None = None,
        n_lstm_layers: int = 1,
        shared_lstm: bool = False,
        enable_critic_lstm: bool = True,
        lstm_kwargs: dict[str, Any] | None = None,
        rim_kwargs: dict[str, Any] | None = None,
        detach_critic: bool = True,
    ):
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
            lstm_hidden_size,
            n_lstm_layers,
            shared_lstm,
            enable_critic_lstm,
            lstm_kwargs,
            rim_kwargs,
            detach_critic,
        )


MlpRimPolicy = RimActorCriticPolicy
CnnRimPolicy = RimActorCriticCnnPolicy
MultiInputRimPolicy = RimMultiInputActorCriticPolicy
