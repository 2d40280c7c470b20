"""Training under SIGKILL: runs killed at random points resume without losing, replaying or
claiming work (issue 13). Children are forked from this process, so no interpreter start-up
is paid per attempt; each trains with one torch thread."""

import multiprocessing
import os
import random
import signal
import time

import numpy as np
import torch
from sb3_contrib import RecurrentPPO

from rim_agents.checkpoints import sorted_checkpoints
from rim_agents.training import make_config, train
from tests.test_training import ENV, TINY

ROLLOUT = 32  # TINY: 2 envs x 16 steps; one epoch of one minibatch: one gradient step per rollout
RUNS, STEPS, EVAL_EVERY = 20, 256, 48


def _config(folder, seed):
    options = dict(n_envs=2, eval_freq=EVAL_EVERY, eval_episodes=1, save_freq=ROLLOUT, progress_bar=False)
    return make_config(
        ENV, seed=seed, overrides=TINY, n_timesteps=STEPS, log_folder=str(folder), device="cpu", **options
    )


def _train(folder, seed, run_dir):
    torch.set_num_threads(1)
    train(_config(folder, seed), run_dir=run_dir)


def _attempt(folder, seed, run_dir, kill_after, after_checkpoints=0):
    """Train in a forked child; SIGKILL it ``kill_after`` seconds after it starts (or, with
    ``after_checkpoints``, after that many new checkpoints appeared), unless None. Its exit code."""
    before = len(list(run_dir.glob("checkpoints/*.zip")))
    child = multiprocessing.get_context("fork").Process(target=_train, args=(folder, seed, run_dir))
    child.start()
    if kill_after is not None and after_checkpoints:
        while child.is_alive() and len(list(run_dir.glob("checkpoints/*.zip"))) < before + after_checkpoints:
            time.sleep(0.002)
    child.join(kill_after)
    if child.is_alive():
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    return child.exitcode


def _trained_steps_claimed_honestly(path):
    model = RecurrentPPO.load(path)
    return model.num_timesteps == model._n_updates * ROLLOUT


def test_runs_killed_at_random_points_resume_without_losing_or_claiming_work(tmp_path):
    rng = random.Random(0)
    kills = resumes = failures = 0
    for seed in range(RUNS):
        folder = tmp_path / str(seed)
        run_dir = folder / "run"  # train() with a run_dir that has no checkpoint starts afresh
        latest, attempts = 0, 0
        while not (run_dir / "final_model.zip").exists():
            # 1st attempt: killed while training, within 20 ms after its 1st to 4th checkpoint of 8
            # (at least three rollouts remain); 2nd: at a random moment of its first 2.5 s (set-up,
            # training or saving); 3rd: runs to the end.
            plan = [(rng.uniform(0.0, 0.02), rng.randint(1, 4)), (rng.uniform(0.05, 2.5), 0), (None, 0)]
            code = _attempt(folder, seed, run_dir, *plan[min(attempts, 2)])
            attempts += 1
            kills += code == -signal.SIGKILL
            if code not in (0, -signal.SIGKILL):
                failures += 1
                break
            found = sorted_checkpoints(run_dir / "checkpoints")
            steps = found[-1][0] if found else 0
            assert steps >= latest, f"run {seed}: the latest checkpoint went back from {latest} to {steps}"
            latest = steps
            resumes += attempts > 1
        for _, checkpoint in sorted_checkpoints(run_dir / "checkpoints"):
            assert _trained_steps_claimed_honestly(checkpoint), checkpoint
        assert _trained_steps_claimed_honestly(run_dir / "final_model.zip")
        with np.load(run_dir / "eval" / "evaluations.npz") as data:
            assert data["timesteps"].tolist() == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)), seed
    print(f"\n{RUNS} runs: {kills} kills, {resumes} resumes, {failures} failed")
    assert failures == 0 and kills >= RUNS
