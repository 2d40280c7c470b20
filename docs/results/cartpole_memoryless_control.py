"""Memoryless control for CartPoleNoVel-v1: SB3 PPO with the YAML block's hyperparameters and heads,
no recurrence. Usage: .venv/bin/python docs/results/cartpole_memoryless_control.py SEED

A stand-in until memoryless PPO is a first-class policy of the training core (issue 12)."""

import sys

import torch
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import DummyVecEnv

from envs import make_env

torch.set_num_threads(1)
seed = int(sys.argv[1])
env = DummyVecEnv([make_env("CartPoleNoVel-v1", seed=seed, idx=i) for i in range(8)])
model = PPO(
    "MlpPolicy",
    env,
    n_steps=32,
    batch_size=256,
    n_epochs=20,
    learning_rate=LinearSchedule(1e-3, 0, 1),
    clip_range=LinearSchedule(0.2, 0, 1),
    gamma=0.98,
    gae_lambda=0.8,
    ent_coef=0.0,
    vf_coef=0.5,
    max_grad_norm=0.5,
    seed=seed,
    policy_kwargs=dict(ortho_init=False, activation_fn=torch.nn.ReLU, net_arch=dict(pi=[64], vf=[64])),
)
model.learn(100_000)
eval_env = DummyVecEnv(
    [make_env("CartPoleNoVel-v1", seed=seed + 10_000, idx=i, evaluation=True) for i in range(4)]
)
mean, std = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=False)
print(f"seed {seed}: memoryless PPO mean return {mean:.1f} +- {std:.1f} over 20 episodes after 100k steps")
