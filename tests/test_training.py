"""Training core and scripts/train_minigrid.py: run directory, resume, interrupts, diagnostics, bad config."""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rim_agents.callbacks import NonFiniteError, usage_entropy
from rim_agents.evaluation import evaluate
from rim_agents.extractors import MiniGridCNN
from rim_agents.nn import RIM
from rim_agents.ppo import RimPPO
from rim_agents.progress import rollout_target
from rim_agents.training import (
    HYPERPARAMS_FILE,
    build_algorithm_kwargs,
    find_run,
    load_hyperparams,
    make_config,
    parse_overrides,
    resume_seed,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = "MiniGrid-MemoryS7-v0"
# Tiny RIM (3 units of 4, hidden size 12) and short episodes, so a run takes seconds.
TINY_PARAMS = [
    "n_steps:16",
    "batch_size:32",
    "n_epochs:1",
    "env_kwargs.max_steps:20",
    "policy_kwargs.net_arch:[8]",
    "policy_kwargs.features_extractor_kwargs:{'features_dim':8}",
    "policy_kwargs.rim_kwargs:{'num_units':3,'unit_size':4,'top_k':2}",
]
TINY = parse_overrides(TINY_PARAMS)


def run_script(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_minigrid.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def script_main(*args):
    """Call scripts/train_minigrid.py's main in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location("train_minigrid", ROOT / "scripts" / "train_minigrid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(arg) for arg in args])


def tiny_config(tmp_path, **options):
    options = {
        "n_timesteps": 64,
        "n_envs": 2,
        "eval_freq": 0,
        "save_freq": 32,
        "progress_bar": False,
        **options,
    }
    return make_config(ENV, seed=0, overrides=TINY, log_folder=str(tmp_path), device="cpu", **options)


@pytest.fixture(scope="module")
def script_run(tmp_path_factory):
    """A 128-step RIM run through the script: checkpoints every 64 steps, evaluation every 64."""
    folder = tmp_path_factory.mktemp("logs")
    common = ["--n-envs", "2", "-f", folder, "--eval-freq", "64", "--eval-episodes", "2", "--save-freq", "64"]
    result = run_script(
        "--env", ENV, "--policy", "rim", "-n", "128", "--seed", "3", *common, "-params", *TINY_PARAMS
    )
    assert result.returncode == 0, result.stderr
    return folder, result


def test_script_writes_the_promised_run_directory(script_run):
    folder, result = script_run
    (run_dir,) = folder.iterdir()
    assert re.fullmatch(rf"{ENV}__rim__3__\d+", run_dir.name)
    assert f"run directory: {run_dir}" in result.stdout
    assert f"tensorboard --logdir {folder}" in result.stdout
    for name in ("config.yaml", "final_model.zip", "best_model.zip", "eval/evaluations.npz"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "rl_model_128_steps.zip",
        "rl_model_64_steps.zip",
    ]
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["hyperparams"]["policy_kwargs"]["rim_kwargs"] == {
        "num_units": 3,
        "unit_size": 4,
        "top_k": 2,
    }
    assert config["n_timesteps"] == 128 and config["seed"] == 3


def test_tensorboard_holds_rim_diagnostics_and_evaluations(script_run):
    folder, _ = script_run
    (run_dir,) = folder.iterdir()
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {f"rim/activation_freq/unit{k}" for k in range(3)} <= scalars
    assert {
        "rim/active_set_change_rate",
        "rim/unit_usage_entropy",
        "rim/state_abs_max/h",
        "rim/state_abs_max/c",
        "eval/mean_reward",
        "eval/success_rate",
    } <= scalars
    assert "rim/unit_activity" in events.Tags()["images"]
    # Each step activates exactly top_k = 2 of the 3 units.
    last = [events.Scalars(f"rim/activation_freq/unit{k}")[-1].value for k in range(3)]
    assert sum(last) == pytest.approx(2.0, abs=1e-5)
    # The default gated read bounds an LSTM unit's h by 2; the states are not all zero.
    state_max = [event.value for event in events.Scalars("rim/state_abs_max/h")]
    assert min(state_max) > 0.0 and max(state_max) <= 2.0


def test_resume_continues_step_count_and_tensorboard_directory(script_run):
    folder, _ = script_run
    (run_dir,) = folder.iterdir()
    result = run_script(
        "--resume", run_dir / "checkpoints" / "rl_model_64_steps.zip", "-n", "192", "--save-freq", "64"
    )
    assert result.returncode == 0, result.stderr
    assert RecurrentPPO.load(run_dir / "final_model.zip").num_timesteps == 192
    assert (run_dir / "checkpoints" / "rl_model_192_steps.zip").is_file()
    assert len(list(folder.iterdir())) == 1  # no new run directory
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    steps = [event.step for event in events.Scalars("rim/unit_usage_entropy")]
    assert max(steps) == 192 and min(steps) <= 64  # one curve, first and resumed part


def test_script_rejects_unknown_env_before_creating_a_run(tmp_path, capsys):
    assert script_main("--env", "MiniGrid-MemoryS8-v0", "-f", tmp_path) == 2
    stderr = capsys.readouterr().err
    assert "close matches" in stderr and "MiniGrid-MemoryS7-v0" in stderr
    assert not list(tmp_path.iterdir())


def test_script_rejects_unknown_hyperparameter(tmp_path, capsys):
    assert script_main("-f", tmp_path, "-params", "n_step:64") == 2
    assert "unknown hyperparameter" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_unknown_override_key_names_close_keys():
    with pytest.raises(ValueError, match=r"'n_step'.*n_steps"):
        make_config(ENV, overrides={"n_step": 64})


@pytest.mark.parametrize(
    ("policy", "override", "message"),
    [
        (
            "rim",
            "policy_kwargs.rim_kwarg:{}",
            r"\['rim_kwarg'\] are not options of RimActorCriticCnnPolicy",
        ),
        ("rim", "policy_kwargs.rim_kwargs.topk:3", r"rim_kwargs 'topk' is not a RIM argument.*'top_k'"),
        ("lstm", "policy_kwargs.lstm_hiden_size:64", r"RecurrentActorCriticCnnPolicy.*'lstm_hidden_size'"),
        ("ppo", "policy_kwargs.net_arc:[64]", r"ActorCriticCnnPolicy.*'net_arch'"),
    ],
)
def test_policy_kwargs_typos_fail_when_the_config_is_built(policy, override, message):
    """Before any model exists: a sweep checks its cells this way when it is created."""
    config = make_config(ENV, policy=policy, overrides=parse_overrides([override]))
    with pytest.raises(ValueError, match=message):
        build_algorithm_kwargs(config)


def test_override_without_colon_is_rejected():
    with pytest.raises(ValueError, match="key:value"):
        parse_overrides(["n_steps=64"])


def test_overrides_parse_literals_and_set_nested_keys():
    overrides = parse_overrides(["n_steps:64", "learning_rate:lin_3e-4", "policy_kwargs.rim_kwargs.top_k:3"])
    assert overrides == {"n_steps": 64, "learning_rate": "lin_3e-4", "policy_kwargs.rim_kwargs.top_k": 3}
    config = make_config(ENV, overrides=overrides)
    rim_kwargs = config.hyperparams["policy_kwargs"]["rim_kwargs"]
    assert (
        rim_kwargs["top_k"] == 3
        and rim_kwargs["num_units"] == load_hyperparams(ENV)["policy_kwargs"]["rim_kwargs"]["num_units"]
    )
    _, _, kwargs = build_algorithm_kwargs(config)
    assert kwargs["learning_rate"](1.0) == pytest.approx(3e-4) and kwargs["learning_rate"](
        0.5
    ) == pytest.approx(1.5e-4)


def test_yaml_has_the_three_minigrid_tasks_with_known_keys():
    table = yaml.safe_load(HYPERPARAMS_FILE.read_text())
    for env_id in ("MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS11-v0", "MiniGrid-DoorKey-5x5-v0"):
        assert load_hyperparams(env_id)["policy"] == "CnnRimPolicy"
        assert env_id in table


def test_lstm_baseline_has_the_rims_total_hidden_size():
    config = make_config(ENV, policy="lstm", overrides=TINY)
    algorithm, policy_name, kwargs = build_algorithm_kwargs(config)
    assert algorithm is RecurrentPPO and policy_name == "CnnLstmPolicy"
    assert kwargs["policy_kwargs"]["lstm_hidden_size"] == 12 and "rim_kwargs" not in kwargs["policy_kwargs"]


@pytest.mark.parametrize(
    ("policy", "packed", "expected"),
    [("rim", False, RimPPO), ("lstm", True, RimPPO), ("lstm", False, RecurrentPPO), ("ppo", True, PPO)],
)
def test_packed_minibatches_reaches_rimppo_and_moves_the_lstm_onto_it(policy, packed, expected):
    config = make_config(ENV, policy=policy, overrides={**TINY, "packed_minibatches": packed})
    algorithm, _, kwargs = build_algorithm_kwargs(config)
    assert algorithm is expected
    # RimPPO takes the key; RecurrentPPO (the LSTM on sb3-contrib's buffer) and PPO have no such argument.
    assert kwargs.get("packed_minibatches") == (packed if expected is RimPPO else None)


def test_memoryless_control_is_ppo_with_the_same_extractor_heads_and_hyperparameters(tmp_path):
    config = make_config(ENV, policy="ppo", overrides=TINY)
    algorithm, policy_name, kwargs = build_algorithm_kwargs(config)
    assert algorithm is PPO and policy_name == "CnnPolicy"
    assert kwargs["policy_kwargs"]["net_arch"] == [8] and "rim_kwargs" not in kwargs["policy_kwargs"]
    assert (kwargs["n_steps"], kwargs["batch_size"], kwargs["n_epochs"]) == (16, 32, 1)

    run_dir = train(tiny_config(tmp_path, policy="ppo", n_timesteps=64, eval_freq=32, eval_episodes=1))
    model = PPO.load(run_dir / "final_model.zip")
    assert model.num_timesteps == 64 and isinstance(model.policy.features_extractor, MiniGridCNN)
    assert not hasattr(model.policy, "lstm_actor")
    # The same run directory as the recurrent policies, without the RIM diagnostics; it resumes.
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert "eval/mean_reward" in events.Tags()["scalars"]
    assert not any(tag.startswith("rim/") for tag in events.Tags()["scalars"])
    resumed = train(
        tiny_config(tmp_path, policy="ppo", n_timesteps=96, eval_freq=32, eval_episodes=1), run_dir=run_dir
    )
    assert PPO.load(resumed / "final_model.zip").num_timesteps == 96
    result = evaluate(run_dir / "final_model.zip", episodes=2)
    assert result["episodes"] == 2 and result["success_rate"] in (0.0, 0.5, 1.0)


def test_interrupt_saves_a_checkpoint_of_trained_steps_only(tmp_path, capsys):
    def interrupt(num_timesteps, mean_return, success_rate):
        raise KeyboardInterrupt

    # Evaluation every 48 steps falls in the middle of the second rollout (rollouts are 2 x 16 = 32 steps).
    config = tiny_config(tmp_path, eval_freq=48, eval_episodes=1, save_freq=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, report=interrupt)
    (run_dir,) = tmp_path.iterdir()
    checkpoint = run_dir / "checkpoints" / "rl_model_32_steps.zip"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == [checkpoint.name]
    model = RecurrentPPO.load(checkpoint)
    assert model.num_timesteps == 32 and isinstance(model.policy.lstm_actor, RIM)
    # The whole command, not just the flag.
    assert f"resume with: python scripts/train_minigrid.py --resume {checkpoint}" in capsys.readouterr().out


def test_report_returning_false_stops_training_early(tmp_path):
    seen = []

    def prune(num_timesteps, mean_return, success_rate):
        seen.append((num_timesteps, success_rate))
        return False

    run_dir = train(tiny_config(tmp_path, n_timesteps=256, eval_freq=48, eval_episodes=1), report=prune)
    assert seen == [(48, seen[0][1])] and seen[0][1] in (0.0, 1.0)
    # Stopped at step 48, inside the second rollout: only the first 32 steps were trained on,
    # and neither the final model nor the last checkpoint claims more.
    final = RecurrentPPO.load(run_dir / "final_model.zip")
    assert final.num_timesteps == 32 and final._n_updates == 1
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["rl_model_32_steps.zip"]


def test_a_stop_at_the_first_evaluation_claims_no_steps(tmp_path):
    # The first rollout's last step (32) is evaluated and stops training before its update.
    run_dir = train(
        tiny_config(tmp_path, n_timesteps=256, eval_freq=32, eval_episodes=1), report=lambda *_: False
    )
    final = RecurrentPPO.load(run_dir / "final_model.zip")
    assert final.num_timesteps == 0 and final._n_updates == 0
    assert not (run_dir / "checkpoints").exists() or not any((run_dir / "checkpoints").iterdir())


def test_sigterm_stops_a_training_script_like_ctrl_c(tmp_path):
    """kill (or a stopped machine, or a background job, which ignores SIGINT): the script saves a
    checkpoint of the trained steps, prints the resume command and exits 130."""
    command = [
        sys.executable, str(ROOT / "scripts" / "train_classic.py"), "--env", "CartPoleNoVel-v1",
        "--n-timesteps", "10000000", "--n-envs", "1", "--log-folder", str(tmp_path), "--no-progress-bar",
        "--eval-freq", "0", "--save-freq", "0", "-params", "n_steps:16", "batch_size:16", "n_epochs:1",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = iter(process.stdout.readline, "")
        assert any(line.startswith("run directory:") for line in lines)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/tb/events.*")) and time.monotonic() < deadline:
            time.sleep(0.5)  # TensorBoard writes once training has started
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=120)[0]
    finally:
        process.kill()
    assert process.returncode == 130, output
    (checkpoint,) = tmp_path.glob("*/checkpoints/rl_model_*_steps.zip")
    assert int(checkpoint.stem.split("_")[2]) > 0
    assert f"--resume {checkpoint}" in output


def test_interrupt_during_the_first_reset_stays_an_interrupt(tmp_path, monkeypatch, capsys):
    def interrupted_reset(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(DummyVecEnv, "reset", interrupted_reset)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path))
    assert "interrupted before training started: nothing new to save" in capsys.readouterr().out
    (run_dir,) = tmp_path.iterdir()
    assert not (run_dir / "checkpoints").exists()


def test_resume_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        find_run(tmp_path / "missing.zip")
    stray = tmp_path / "model.zip"
    stray.write_bytes(b"")
    with pytest.raises(ValueError, match="not inside a run directory"):
        find_run(stray)
    with pytest.raises(ValueError, match="no checkpoints"):
        find_run(tmp_path)


def test_resume_with_another_policy_is_refused(tmp_path, capsys):
    run_dir = train(tiny_config(tmp_path, n_timesteps=32))
    assert script_main("--resume", run_dir, "--policy", "lstm") == 2
    assert "conflicts" in capsys.readouterr().err
    assert script_main("--resume", tmp_path / "nowhere.zip") == 2
    assert "does not exist" in capsys.readouterr().err
    lstm_config = tiny_config(tmp_path, n_timesteps=64, policy="lstm")
    with pytest.raises(ValueError, match="holds a RimActorCriticCnnPolicy"):
        train(lstm_config, run_dir=run_dir)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["policy"] == "rim"  # the run is untouched


def test_nan_after_an_update_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    original_train = RimPPO.train
    updates = []

    def train_then_poison(self):
        original_train(self)
        updates.append(self.num_timesteps)
        if len(updates) == 2:
            with torch.no_grad():
                self.policy.lstm_actor.layers[0].weight_hh[0, 0, 0] = float("nan")

    monkeypatch.setattr(RimPPO, "train", train_then_poison)
    config = tiny_config(tmp_path, n_timesteps=160, save_freq=32)
    with pytest.raises(NonFiniteError) as raised:
        train(config)
    (run_dir,) = tmp_path.iterdir()
    good = run_dir / "checkpoints" / "rl_model_32_steps.zip"
    message = str(raised.value)
    assert "training stopped at step 64" in message
    assert "in the update before it in parameter policy.lstm_actor.layers.0.weight_hh" in message
    assert f"--resume {good}" in message
    # Nothing saved the poisoned model: no checkpoint at 64 steps, no final model.
    assert [p.name for p in good.parent.iterdir()] == [good.name]
    assert not (run_dir / "final_model.zip").exists()
    assert all(p.isfinite().all() for p in RecurrentPPO.load(good).policy.parameters())

    monkeypatch.undo()
    resumed = train(config, checkpoint=good)
    assert RecurrentPPO.load(resumed / "final_model.zip").num_timesteps == 160


def test_nan_logits_during_a_rollout_are_named_with_their_step(tmp_path, monkeypatch):
    original_forward = RIM.forward
    calls = []

    def forward_then_poison(self, *args, **kwargs):
        output, state = original_forward(self, *args, **kwargs)
        calls.append(1)
        return (output * float("nan"), state) if len(calls) == 40 else (output, state)

    monkeypatch.setattr(RIM, "forward", forward_then_poison)
    with pytest.raises(
        NonFiniteError,
        match=r"at step \d+: non-finite values during the rollout in the "
        r"policy's action distribution \(logits\)",
    ) as raised:
        train(tiny_config(tmp_path, n_timesteps=160, save_freq=32))
    assert "rl_model_32_steps.zip" in str(raised.value)
    assert isinstance(raised.value.__cause__, ValueError)


def test_an_error_before_training_starts_reaches_the_caller_as_it_is(tmp_path, monkeypatch):
    # learn() can fail before any callback is set up (here: the first reset); the NaN guard
    # then has no model to inspect and must let the original error through.
    def broken_reset(self, *args, **kwargs):
        raise ValueError("could not broadcast input array from shape (84,84,3) into shape (36,36,3)")

    monkeypatch.setattr(DummyVecEnv, "reset", broken_reset)
    with pytest.raises(ValueError, match=r"could not broadcast input array"):
        train(tiny_config(tmp_path, n_timesteps=64))


def test_usage_entropy_is_zero_for_a_fixed_active_set_and_one_for_equal_use():
    # 4 units, top_k 2, 100 steps: the same two units always, then every unit equally often.
    assert usage_entropy(np.array([[100.0, 100.0, 0.0, 0.0]]), top_k=2) == pytest.approx(0.0)
    assert usage_entropy(np.array([[50.0, 50.0, 50.0, 50.0]]), top_k=2) == pytest.approx(1.0)
    between = usage_entropy(np.array([[100.0, 50.0, 50.0, 0.0]]), top_k=2)
    assert 0.0 < between < 1.0
    # Layers are averaged: one fixed layer and one even layer give one half.
    assert usage_entropy(np.array([[100.0, 100.0, 0.0, 0.0], [50.0] * 4]), top_k=2) == pytest.approx(0.5)


def test_rgb_minigrid_with_the_symbolic_defaults_is_refused_and_a_pixel_network_trains(tmp_path):
    config = tiny_config(tmp_path, n_timesteps=32, save_freq=0)
    config.hyperparams["env_kwargs"] = {"observation": "rgb", "tile_size": 6}
    with pytest.raises(ValueError, match=r"observation='rgb' gives 0-255 pixels.*MiniGridCNN.*NatureCNN"):
        build_algorithm_kwargs(config)
    pixels = parse_overrides(
        [
            "policy_kwargs.features_extractor_class:stable_baselines3.common.torch_layers.NatureCNN",
            "policy_kwargs.normalize_images:True",
            "env_kwargs.observation:rgb",
            "env_kwargs.tile_size:6",
        ]
    )
    options = dict(n_timesteps=32, n_envs=2, eval_freq=0, save_freq=0, progress_bar=False, device="cpu")
    config = make_config(ENV, overrides={**TINY, **pixels}, log_folder=str(tmp_path), **options)
    model = RecurrentPPO.load(train(config) / "final_model.zip")
    assert model.observation_space.shape == (3, 42, 42)


def test_resume_reseeds_from_seed_and_steps_and_stays_deterministic(tmp_path, monkeypatch):
    seeds = []
    original_seed = DummyVecEnv.seed

    def spy(self, seed=None):
        seeds.append(seed)
        return original_seed(self, seed)

    monkeypatch.setattr(DummyVecEnv, "seed", spy)
    run_dir = train(tiny_config(tmp_path, n_timesteps=64, save_freq=32))
    checkpoint = run_dir / "checkpoints" / "rl_model_32_steps.zip"
    assert resume_seed(0, 32) not in (0, resume_seed(0, 64), resume_seed(1, 32))

    finals = []
    for attempt in range(2):
        seeds.clear()
        resumed = train(tiny_config(tmp_path / str(attempt), n_timesteps=64), checkpoint=checkpoint)
        # The environments continue on new levels, not step 0's (seed 0) once more.
        assert seeds[-1] == resume_seed(0, 32)
        finals.append(RecurrentPPO.load(resumed / "final_model.zip").policy.state_dict())
    for name, value in finals[0].items():
        assert torch.equal(value, finals[1][name]), name  # two resumes from one checkpoint agree bit for bit


def _eval_history(run_dir):
    with np.load(run_dir / "eval" / "evaluations.npz") as data:
        return data["timesteps"].tolist()


def test_resume_from_an_earlier_checkpoint_keeps_one_trajectory_of_evaluations(tmp_path):
    # Evaluations every 48 steps, checkpoints every 32; the run goes to 160, then restarts at 64.
    run_dir = train(tiny_config(tmp_path, n_timesteps=160, eval_freq=48, eval_episodes=1, save_freq=32))
    assert _eval_history(run_dir) == [48, 96, 144]
    # A best model found past the checkpoint belongs to the abandoned trajectory.
    (run_dir / "best_model.json").write_text(json.dumps({"num_timesteps": 144, "mean_return": 0.5}))
    config = tiny_config(tmp_path, n_timesteps=160, eval_freq=48, eval_episodes=1, save_freq=32)
    train(config, checkpoint=run_dir / "checkpoints" / "rl_model_64_steps.zip")

    assert _eval_history(run_dir) == [48, 96, 144]  # 96 and 144 again, on the same grid, once each
    abandoned = sorted(p.name for p in (run_dir / "checkpoints" / "abandoned").iterdir())
    assert abandoned == ["rl_model_128_steps.zip", "rl_model_160_steps.zip", "rl_model_96_steps.zip"]
    assert json.loads((run_dir / "abandoned_best_model.json").read_text())["num_timesteps"] == 144
    if (run_dir / "best_model.json").is_file():
        assert json.loads((run_dir / "best_model.json").read_text())["num_timesteps"] <= 160
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    steps = [event.step for event in events.Scalars("eval/mean_reward")]
    assert steps == [48, 96, 144]  # TensorBoard purged the abandoned evaluations too
    # The checkpoint's own step was logged before it was saved: it stays, once.
    assert [event.step for event in events.Scalars("time/fps")] == [32, 64, 96, 128, 160]


def test_the_progress_target_is_where_learning_really_stops():
    assert rollout_target(0, 4000, 4096) == 4096  # one whole rollout, not 4,096/4,000
    assert rollout_target(4096, 8000, 4096) == 8192
    assert rollout_target(64, 64, 32) == 64


def test_without_a_terminal_training_prints_plain_progress_lines(tmp_path, capsys):
    train(tiny_config(tmp_path, n_timesteps=48, eval_freq=32, eval_episodes=1))
    out = capsys.readouterr().out  # captured: not a terminal
    assert "step 64/64 (100%), " in out and "steps/s, last evaluation " in out and " at step 64" in out


@pytest.mark.parametrize("name", ["eval/evaluations.npz", "best_model.json"])
def test_a_truncated_history_file_is_named_at_resume(tmp_path, name):
    run_dir = train(tiny_config(tmp_path, n_timesteps=64, eval_freq=32, eval_episodes=1, save_freq=32))
    damaged = run_dir / name
    damaged.write_bytes(damaged.read_bytes()[: len(damaged.read_bytes()) // 2])
    config = tiny_config(tmp_path, n_timesteps=96, eval_freq=32, eval_episodes=1, save_freq=32)
    with pytest.raises(ValueError, match=rf"{re.escape(str(damaged))} cannot be read .* move it"):
        train(config, run_dir=run_dir)


def test_a_truncated_checkpoint_is_named_with_the_one_to_resume_from(tmp_path):
    run_dir = train(tiny_config(tmp_path, n_timesteps=96, save_freq=32))
    latest = run_dir / "checkpoints" / "rl_model_96_steps.zip"
    latest.write_bytes(latest.read_bytes()[:1000])
    with pytest.raises(
        ValueError, match=r"rl_model_96_steps.zip.* cannot be read .* resume from .*rl_model_64"
    ):
        train(tiny_config(tmp_path, n_timesteps=128), run_dir=run_dir)


def test_only_the_newest_checkpoints_are_kept_and_resume_finds_the_newest(tmp_path):
    run_dir = train(tiny_config(tmp_path, n_timesteps=192, save_freq=32, keep_checkpoints=2))
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["rl_model_160_steps.zip", "rl_model_192_steps.zip"]
    assert find_run(run_dir)[1].name == "rl_model_192_steps.zip"
    resumed = train(tiny_config(tmp_path, n_timesteps=256, save_freq=32, keep_checkpoints=2), run_dir=run_dir)
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == [
        "rl_model_224_steps.zip",
        "rl_model_256_steps.zip",
    ]
    with pytest.raises(ValueError, match="keep_checkpoints=-1 must be a non-negative number of checkpoints"):
        tiny_config(tmp_path, keep_checkpoints=-1)


class _RecordThreads(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def _on_step(self) -> bool:
        self.seen.add(torch.get_num_threads())
        return True


@pytest.mark.parametrize("threads", [1, 2])
def test_training_uses_the_configured_torch_threads_and_restores_them(tmp_path, threads):
    before = torch.get_num_threads()
    record = _RecordThreads()
    train(tiny_config(tmp_path, n_timesteps=32, num_threads=threads), callbacks=[record])
    assert record.seen == {threads} and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads=0 must be a positive integer"):
        tiny_config(tmp_path, num_threads=0)


def test_script_num_threads_flag_reaches_the_run_config(tmp_path):
    flags = ["-n", "32", "-f", tmp_path, "--num-threads", "2", "--eval-freq", "0", "--no-progress-bar"]
    assert script_main(*flags, "--n-envs", "2", "-params", *TINY_PARAMS) == 0
    (run_dir,) = tmp_path.iterdir()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["num_threads"] == 2


def test_a_rim_agent_trains_with_a_three_by_three_view(tmp_path):
    config = tiny_config(tmp_path, n_timesteps=32, save_freq=0)
    config.hyperparams["env_kwargs"] = {"observation": "symbolic", "view_size": 3}
    model = RecurrentPPO.load(train(config) / "final_model.zip")
    assert model.observation_space.shape == (3, 3, 3) and model.num_timesteps == 32


def test_evaluating_does_not_change_what_a_run_trains_on(tmp_path):
    finals = []
    for eval_freq in (0, 32):
        run_dir = train(
            tiny_config(tmp_path / str(eval_freq), n_timesteps=96, eval_freq=eval_freq, eval_episodes=2)
        )
        finals.append(RecurrentPPO.load(run_dir / "final_model.zip").policy.state_dict())
    for name, value in finals[0].items():
        assert torch.equal(value, finals[1][name]), name
