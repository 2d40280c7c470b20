"""Run folders are one level deep for every env id, and runs in the older nested layout are still read.

An id with a namespace (``MinAtar/Breakout-v1``) used to make ``MinAtar/Breakout-v1__rim__0__<time>``,
two folders deep; now its ``/`` becomes ``+``. Each test that reads the old layout builds such a
folder in tmp_path and resumes it (``--resume``), evaluates it (``scripts/evaluate.py``) or
resumes and reports it in a sweep (``sweep.py work`` and ``report``).
"""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
from optuna.trial import TrialState
from sb3_contrib import RecurrentPPO

from rim_agents.sweep import (
    CELL,
    INDEX,
    RUN_NAME,
    START_STEP,
    Requeue,
    Worker,
    cell_config,
    create_grid,
    report,
    work,
)
from rim_agents.training import make_config, new_run_dir, parse_overrides, run_folder_env, train

ROOT = Path(__file__).resolve().parents[1]
GAME = "MinAtar/Breakout-v1"
TINY_PARAMS = [
    "n_steps:16",
    "batch_size:32",
    "n_epochs:1",
    "env_kwargs.max_episode_steps:40",  # evaluation plays whole games otherwise
    "policy_kwargs.features_extractor_kwargs:{'features_dim':8}",
    "policy_kwargs.rim_kwargs:{'num_units':2,'unit_size':4,'top_k':1,'cell':'gru'}",
]
TINY_GRID = """\
env: MinAtar/Breakout-v1
seed: [0, 1]
n_timesteps: 64
n_envs: 2
eval_freq: 32
eval_episodes: 1
save_freq: 32
device: cpu
n_steps: 16
batch_size: 32
n_epochs: 1
env_kwargs.max_episode_steps: 40
policy_kwargs.features_extractor_kwargs: {features_dim: 8}
policy_kwargs.rim_kwargs: {num_units: 2, unit_size: 4, top_k: 1, cell: gru}
"""


def script_main(script, *args):
    """A script's main in this process (no interpreter start-up)."""
    spec = importlib.util.spec_from_file_location(script, ROOT / "scripts" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main([str(arg) for arg in args])


def tiny_config(log_folder, **options):
    return make_config(
        GAME,
        overrides=parse_overrides(TINY_PARAMS),
        n_timesteps=32,
        n_envs=2,
        log_folder=str(log_folder),
        eval_freq=0,
        save_freq=32,
        progress_bar=False,
        device="cpu",
        **options,
    )


def test_a_namespaced_id_gets_one_flat_folder_whose_name_no_other_id_shares():
    assert run_folder_env("MinAtar/Breakout-v1") == "MinAtar+Breakout-v1"
    assert run_folder_env("ALE/Pong-v5") == "ALE+Pong-v5"
    assert run_folder_env("MiniGrid-MemoryS7-v0") == "MiniGrid-MemoryS7-v0"
    # "/" -> "-" would give both "A-B-C-v0"; "+" is outside gymnasium's id alphabet.
    assert run_folder_env("A-B/C-v0") != run_folder_env("A/B-C-v0")


def test_a_new_minatar_run_folder_is_one_level_deep(tmp_path):
    run_dir = new_run_dir(tiny_config(tmp_path))
    assert run_dir.parent == tmp_path and run_dir.name.startswith("MinAtar+Breakout-v1__rim__0__")


def old_nested_run(tmp_path):
    """A finished-to-32-steps run moved into the layout older runs have: ``logs/MinAtar/Breakout-v1__...``."""
    run_dir = train(tiny_config(tmp_path / "made"))
    nested = tmp_path / "logs" / "MinAtar" / "Breakout-v1__rim__0__1700000000"
    nested.parent.mkdir(parents=True)
    shutil.move(run_dir, nested)
    return nested


def test_an_old_nested_run_resumes_in_place_and_evaluates(tmp_path):
    nested = old_nested_run(tmp_path)
    assert script_main("train_minatar", "--resume", nested, "-n", 64, "--no-progress-bar") == 0
    assert RecurrentPPO.load(nested / "final_model.zip").num_timesteps == 64
    assert sorted(p.name for p in (nested / "checkpoints").glob("*.zip")) == [
        "rl_model_32_steps.zip",
        "rl_model_64_steps.zip",
    ]
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["MinAtar"]  # no second, flat run
    assert [p.name for p in (tmp_path / "logs" / "MinAtar").iterdir()] == [nested.name]

    out = tmp_path / "result.json"
    assert script_main("evaluate", "--model", nested, "--episodes", 1, "--json", out) == 0
    result = json.loads(out.read_text())
    assert result["env"] == GAME and len(result["returns"]) == 1


def test_a_sweep_resumes_and_reports_a_cell_whose_run_name_is_nested(tmp_path):
    """A retry carries its run name; one stored before flat names resumes its nested folder, and a
    fresh cell of the same sweep gets a flat one."""
    grid, storage, output = tmp_path / "grid.yaml", str(tmp_path / "sweeps.log"), tmp_path / "runs"
    grid.write_text(TINY_GRID)
    assert create_grid(storage, "old", grid) == 2
    worker = Worker(storage, "old", output, heartbeat=1, grace=600, max_retry=3)
    trial, _ = worker._take()  # cell 0 (seed 0), as a worker of the old layout left it
    old_name = "0000__MinAtar/Breakout-v1__rim__0"
    trial.set_user_attr(RUN_NAME, old_name)
    cell = trial.user_attrs[CELL]
    train(cell_config({**cell, "n_timesteps": 32}, output / "old"), run_dir=output / "old" / old_name)
    failed = worker.study.tell(trial.number, state=TrialState.FAIL)
    assert Requeue(death=False).add(worker.study, failed)

    assert work(storage, "old", output, heartbeat=1, grace=600) == 0
    complete = {t.user_attrs[INDEX]: t for t in worker.study.get_trials() if t.state == TrialState.COMPLETE}
    assert complete[0].user_attrs[RUN_NAME] == old_name and complete[0].user_attrs[START_STEP] == 32
    assert complete[1].user_attrs[RUN_NAME] == "0001__MinAtar+Breakout-v1__rim__1"
    assert sorted(p.name for p in (output / "old").iterdir()) == [
        "0000__MinAtar",
        "0001__MinAtar+Breakout-v1__rim__1",
    ]
    with np.load(output / "old" / old_name / "eval" / "evaluations.npz") as history:
        assert history["timesteps"].tolist() == [32, 64]

    text = report(storage, "old", output, json_path=tmp_path / "old.json")
    assert "2/2 complete" in text
    (row,) = json.loads((tmp_path / "old.json").read_text())
    assert row["n_seeds"] == 2
