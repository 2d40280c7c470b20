"""Bad input to every command-line tool and the Python API: one clear line, a non-zero exit, nothing changed.

Each case runs a script's ``main(argv)`` in this process (what ``python scripts/<name>.py``
runs) against a folder that already holds a run, a file and a sweep, and asserts: exit
status 2, exactly one line on stderr that starts with ``error:`` and names the problem, and
every file and folder that existed before is unchanged, with nothing new. Every case fails
before an environment steps, so the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import optuna
import pytest
import torch
from stable_baselines3 import DQN

from rim_agents.nn import RIM
from rim_agents.ppo import RimPPO
from rim_agents.sweep import INDEX, RUN_NAME, create_grid, open_storage
from rim_agents.training import make_config, parse_overrides, train

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("minigrid", "atari", "minatar", "popgym", "classic")
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
ROOT_USER = pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
TINY = [
    "n_steps:16",
    "batch_size:32",
    "n_epochs:1",
    "policy_kwargs.net_arch:[8]",
    "policy_kwargs.features_extractor_kwargs:{'features_dim':8}",
    "policy_kwargs.rim_kwargs:{'num_units':3,'unit_size':4,'top_k':2}",
]
GRID = """\
env: MiniGrid-MemoryS7-v0
n_timesteps: 64
n_envs: 2
eval_freq: 64
n_steps: {n_steps}
"""
_MODULES: dict[str, ModuleType] = {}


def script(name: str) -> ModuleType:
    """scripts/<name>.py as a module, loaded once."""
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


def snapshot(*folders: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``folders`` with whether it is a folder, its size and its modification time."""
    return {
        str(path): (path.is_dir(), path.stat().st_size, path.stat().st_mtime_ns)
        for folder in folders
        for path in sorted(folder.rglob("*"))
    }


def tiny_run(folder: Path) -> Path:
    """A finished 32-step MiniGrid RIM run with no checkpoint (save_freq 0)."""
    config = make_config(
        "MiniGrid-MemoryS7-v0",
        overrides=parse_overrides(TINY),
        n_timesteps=32,
        n_envs=2,
        log_folder=str(folder),
        eval_freq=0,
        save_freq=0,
        progress_bar=False,
        device="cpu",
    )
    return train(config)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What the cases point at: a trained run, another algorithm's model, a sweep with one finished cell."""
    folder = tmp_path_factory.mktemp("assets")
    run = tiny_run(folder / "logs")
    DQN("MlpPolicy", "CartPole-v1", buffer_size=100).save(folder / "dqn.zip")
    RimPPO(
        "MlpRimPolicy",
        "CartPole-v1",
        n_steps=16,
        batch_size=16,
        policy_kwargs={"rim_kwargs": {"num_units": 2, "unit_size": 4, "top_k": 1}},
    ).save(folder / "rim_cartpole.zip")
    (folder / "grid.yaml").write_text(GRID.format(n_steps=16))
    storage = folder / "sweeps.log"
    create_grid(str(storage), "done", folder / "grid.yaml")
    study = optuna.load_study(study_name="done", storage=open_storage(str(storage))[0])
    trial = study.ask()
    trial.set_user_attr(INDEX, 0)
    trial.set_user_attr(RUN_NAME, "0000__MiniGrid-MemoryS7-v0__rim__0")
    study.tell(trial, 0.0)
    (folder / "runs" / "done" / "0000__MiniGrid-MemoryS7-v0__rim__0").mkdir(parents=True)
    (folder / "empty").mkdir()
    return {"run": run, "storage": storage, "folder": folder}


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder of a case: an earlier run, a plain file, a malformed grid and a bad-value grid."""
    old_run = tmp_path / "logs" / "CartPoleNoVel-v1__rim__0__1700000000"
    old_run.mkdir(parents=True)
    (old_run / "config.yaml").write_text("env: CartPoleNoVel-v1\n")
    (tmp_path / "file.txt").write_text("not a folder\n")
    (tmp_path / "malformed.yaml").write_text("env: [MiniGrid-MemoryS7-v0\nseed: {0\n")
    (tmp_path / "zero_steps.yaml").write_text(GRID.format(n_steps=0))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def case(name: str, argv: list[str], message: str, marks: pytest.MarkDecorator | tuple = ()) -> object:
    """One command-line case, named by its command line."""
    return pytest.param(name, argv, message, marks=marks, id=" ".join([name, *argv]))


def train_cases() -> list:
    cases = []
    for family in FAMILIES:
        name = f"train_{family}"
        cases += [
            case(name, ["-params", "n_steps:0"], "n_steps must be a positive integer, got 0"),
            case(name, ["--device", "tpu"], "device='tpu' is not a torch device"),
            case(name, ["--device", "cuda"], "no CUDA GPU", marks=NO_GPU),
            case(name, ["-f", "{ws}/file.txt"], "file.txt' is a file, not a folder"),
        ]
    bad_values = {
        "n_steps:64.5": "n_steps must be a positive integer, got 64.5",
        "n_steps:'64'": "n_steps must be a positive integer, got '64'",
        "n_steps:-5": "n_steps must be a positive integer, got -5",
        "n_epochs:0": "n_epochs must be a positive integer, got 0",
        "batch_size:0": "batch_size must be a positive integer, got 0",
        "gamma:2.0": "gamma must be a number in [0, 1], got 2.0",
        "gae_lambda:-0.1": "gae_lambda must be a number in [0, 1], got -0.1",
        "clip_range:0": "clip_range must be a number > 0 or a linear schedule",
        "ent_coef:-0.01": "ent_coef must be a number >= 0, got -0.01",
        "vf_coef:-1": "vf_coef must be a number >= 0, got -1",
        "max_grad_norm:0": "max_grad_norm must be a number > 0, got 0",
        "target_kl:-1": "target_kl must be a number > 0 or None, got -1",
        "learning_rate:abc": "learning_rate must be a number > 0 or a linear schedule 'lin_<start>'",
        "learning_rate:lin_0": "got 'lin_0'",
    }
    cases += [case("train_classic", ["-params", item], message) for item, message in bad_values.items()]
    cases += [
        case("train_classic", ["--device", "cuda:7"], "device='cuda:7'", marks=NO_GPU),
        case("train_classic", ["-f", "{ws}/file.txt/sub"], "file.txt' is a file, not a folder"),
        case(
            "train_classic", ["--resume", "{ws}/logs/CartPoleNoVel-v1__rim__0__1700000000"], "no checkpoints"
        ),
    ]
    return cases


MAIN_CASES = [
    case("main", ["--episodes", "0"], "--episodes must be a positive integer, got 0"),
    case("main", ["-n", "0"], "-n must be a positive integer, got 0"),
    case("main", ["--control-steps", "0"], "--control-steps must be a positive integer"),
    case("main", ["--train-minutes", "0"], "--train-minutes must be a positive number"),
    case("main", ["--test-env", "Nope-v0"], "--test-env 'Nope-v0': env_id='Nope-v0' belongs to no"),
    case("main", ["--test-env", "MiniGrid-MemoryS11-v0"], "is a minigrid task, but the agents train on"),
    case("main", ["--test-env", "popgym-CountRecallEasy-v0"], "both agents must act in the test task"),
    case("main", ["-params", "learning_rate:abc"], "learning_rate must be a number > 0"),
    case("main", ["-params", "n_epochs:0"], "n_epochs must be a positive integer"),
    case("main", ["--device", "cuda"], "no CUDA GPU", marks=NO_GPU),
    case("main", ["-f", "{ws}/file.txt"], "file.txt' is a file, not a folder"),
]
EVALUATE_CASES = [
    case("evaluate", ["--model", "{assets}/empty"], "no best_model.zip, final_model.zip nor checkpoints"),
    case("evaluate", ["--model", "{ws}/nothing.zip"], "does not exist"),
    case("evaluate", ["--model", "{assets}/dqn.zip"], "holds a DQNPolicy, the policy of another algorithm"),
    case("evaluate", ["--model", "{assets}/rim_cartpole.zip"], "pass one with --env"),
    case(
        "evaluate",
        ["--model", "{run}", "--env", "popgym-RepeatFirstEasy-v0"],
        "popgym-RepeatFirstEasy-v0 does not fit the agent trained on MiniGrid-MemoryS7-v0",
    ),
    case(
        "evaluate",
        ["--model", "{run}", "--env", "MinAtar/Breakout-v1"],
        "MinAtar/Breakout-v1 does not fit the agent trained on MiniGrid-MemoryS7-v0",
    ),
    case("evaluate", ["--model", "{run}", "--video", "{ws}/file.txt"], "--video"),
    case("evaluate", ["--model", "{run}", "--json", "{ws}/logs"], "--json '{ws}/logs' is a folder"),
    case("evaluate", ["--model", "{run}", "--json", "{ws}/file.txt/r.json"], "is a file, not a folder"),
    case("evaluate", ["--model", "{run}", "--activations", "{ws}/file.txt/u.png"], "--activations"),
    case("evaluate", ["--model", "{run}", "--episodes", "0"], "--episodes must be a positive integer"),
    case("evaluate", ["--model", "{run}", "--device", "cuda"], "no CUDA GPU", marks=NO_GPU),
]
SWEEP_CASES = [
    case(
        "sweep",
        ["create", "--storage", "{ws}/new.log", "--study", "s", "--grid", "{ws}/malformed.yaml"],
        "malformed.yaml' is not valid YAML",
    ),
    case(
        "sweep",
        ["create", "--storage", "{ws}/new.log", "--study", "s", "--grid", "{ws}/zero_steps.yaml"],
        "n_steps must be a positive integer, got 0",
    ),
    case(
        "sweep",
        ["work", "--storage", "{assets}/sweeps.log", "--study", "done", "--output", "{ws}/file.txt"],
        "--output '{ws}/file.txt'",
    ),
    case(
        "sweep",
        ["report", "--storage", "{assets}/sweeps.log", "--study", "done", "--output", "{ws}/logs"],
        "--output must be the folder the workers wrote to",
    ),
    case(
        "sweep",
        ["report", "--storage", "{assets}/sweeps.log", "--study", "done", "--json", "{ws}/file.txt/r.json"],
        "--json",
    ),
]


def fill(text: str, workspace: Path, assets: dict[str, Path]) -> str:
    return text.format(ws=workspace, assets=assets["folder"], run=assets["run"])


@pytest.mark.parametrize("name, argv, message", train_cases() + MAIN_CASES + EVALUATE_CASES + SWEEP_CASES)
def test_bad_command_line_input_is_one_clear_line_and_changes_nothing(
    name: str,
    argv: list[str],
    message: str,
    workspace: Path,
    assets: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Tiny budgets first (the case's own flags come later and win), in case a check is ever lost.
    budget = {"main": ["-n", "64", "--control-steps", "64", "--episodes", "1", "--train-minutes", "0.1"]}
    if name.startswith("train_"):
        budget[name] = ["-n", "64"]
    argv = [*budget.get(name, []), *[fill(arg, workspace, assets) for arg in argv]]
    if name in budget:
        argv = ["-f", str(workspace / "logs"), *argv]
    before = snapshot(workspace, assets["folder"])
    code = script(name).main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fill(message, workspace, assets) in err
    assert snapshot(workspace, assets["folder"]) == before


@ROOT_USER
@pytest.mark.parametrize(
    "name, argv",
    [
        ("train_classic", ["-f", "{ws}/readonly/logs"]),
        ("main", ["-f", "{ws}/readonly"]),
        ("evaluate", ["--model", "{run}", "--video", "{ws}/readonly/videos"]),
        ("evaluate", ["--model", "{run}", "--json", "{ws}/readonly/r.json"]),
    ],
)
def test_a_read_only_folder_is_refused_before_any_work(name, argv, workspace, assets, capsys):
    (workspace / "readonly").mkdir(mode=0o555)
    code = script(name).main([fill(arg, workspace, assets) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2 and "is not writable" in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("train_classic", ["-params", "n_steps:0", "-f", "{ws}"], "n_steps must be a positive integer"),
        ("evaluate", ["--model", "{assets}/dqn.zip"], "holds a DQNPolicy"),
        ("main", ["--episodes", "0", "-f", "{ws}"], "--episodes must be a positive integer"),
        ("sweep", ["create", "--study", "s", "--grid", "{ws}/malformed.yaml"], "is not valid YAML"),
    ],
)
def test_the_real_processes_exit_2_without_a_traceback(name, argv, message, workspace, assets):
    argv = [fill(arg, workspace, assets) for arg in argv]
    command = [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *argv]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=workspace, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_make_config_refuses_a_bad_hyperparameter_the_api_way():
    with pytest.raises(ValueError, match=r"hyperparameter n_steps must be a positive integer, got -5"):
        make_config("MiniGrid-MemoryS7-v0", overrides={"n_steps": -5})
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\], got 2.0"):
        make_config("CartPoleNoVel-v1", overrides={"gamma": 2.0})


@NO_GPU
@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_rim_ppo_refuses_a_gpu_this_machine_lacks(device):
    with pytest.raises(ValueError, match=rf"device='{device}', but torch sees no CUDA GPU"):
        RimPPO("MlpRimPolicy", "CartPole-v1", device=device)


def test_rim_ppo_refuses_a_device_torch_does_not_know():
    with pytest.raises(ValueError, match=r"device='tpu' is not a torch device"):
        RimPPO("MlpRimPolicy", "CartPole-v1", device="tpu")


@pytest.mark.parametrize(
    "make_input, hx, error, message",
    [
        (
            lambda: torch.zeros(3, 2, 4, dtype=torch.int64),
            None,
            ValueError,
            r"dtype torch.int64, .*\(input.float\(\)\)",
        ),
        (lambda: torch.zeros(3, 2, 4, dtype=torch.float64), None, ValueError, r"rim.to\(torch.float64\)"),
        (
            lambda: torch.zeros(3, 2, 4),
            torch.zeros(1, 2, 6),
            TypeError,
            r"hx must be a tuple \(h_0, c_0\).*\(1, 2, 6\)",
        ),
    ],
)
def test_rim_names_a_wrong_input_dtype_or_a_bare_state_tensor(make_input, hx, error, message):
    rim = RIM(4, num_units=2, unit_size=3, top_k=1)
    with pytest.raises(error, match=message):
        rim(make_input(), hx)


def test_rim_refuses_a_dtype_that_is_not_floating_point():
    with pytest.raises(ValueError, match=r"dtype must be a floating-point torch.dtype.*torch.int64"):
        RIM(4, num_units=2, unit_size=3, top_k=1, dtype=torch.int64)


def test_a_fresh_start_into_a_finished_run_is_refused_and_leaves_it_as_it_was(assets, tmp_path):
    run = shutil.copytree(assets["run"], tmp_path / "run")
    before = snapshot(run)
    config = make_config(
        "MiniGrid-MemoryS7-v0", overrides=parse_overrides(TINY), n_timesteps=64, n_envs=2, eval_freq=0
    )
    with pytest.raises(ValueError, match=r"holds a finished run with no checkpoint to continue from"):
        train(config, run_dir=run)
    assert snapshot(run) == before


def test_a_second_identical_run_in_the_same_second_gets_its_own_folder(workspace, monkeypatch, capsys):
    import rim_agents.training as training

    # Both runs start "at once": the run directory's time stamp is the same second.
    monkeypatch.setattr(training, "time", SimpleNamespace(time=lambda: 1_800_000_000.0))
    argv = [
        "-f",
        str(workspace / "runs"),
        "-n",
        "32",
        "--n-envs",
        "2",
        "--eval-freq",
        "0",
        "--save-freq",
        "0",
    ]
    argv += ["-params", "n_steps:16", "batch_size:32", "n_epochs:1", "policy_kwargs.net_arch:[8]"]
    argv += ["policy_kwargs.rim_kwargs:{'num_units':2,'unit_size':4,'top_k':1}"]
    assert script("train_classic").main(argv) == 0
    (first,) = (workspace / "runs").iterdir()
    before = snapshot(first)
    assert script("train_classic").main(argv) == 0
    runs = sorted(path.name for path in (workspace / "runs").iterdir())
    assert runs == ["CartPoleNoVel-v1__rim__0__1800000000", "CartPoleNoVel-v1__rim__0__1800000001"]
    assert snapshot(first) == before
