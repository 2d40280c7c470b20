"""Sweeps on Optuna: grids run each cell once with several workers, on a journal file and on PostgreSQL,
a killed worker's trial resumes from its checkpoint, and bad input fails with a clear message."""

import glob
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.image import imread
from optuna.trial import TrialState

from rim_agents.sweep import (
    CELL,
    INDEX,
    RUN_NAME,
    START_STEP,
    WORKER,
    Worker,
    create_grid,
    create_search,
    load_grid,
    open_storage,
    report,
    summarize,
    work,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sweep.py"
# Tiny runs: a RIM of 3 units of 4, 20-step episodes, 2 envs x 16 steps per rollout, a checkpoint
# every rollout and an evaluation of 2 episodes every 64 steps.
TINY_GRID = """\
env: MiniGrid-MemoryS7-v0
policy: [rim, lstm]
seed: [0, 1]
n_timesteps: {steps}
n_envs: 2
eval_freq: 64
eval_episodes: 2
save_freq: 32
device: cpu
n_steps: 16
batch_size: 32
n_epochs: 1
learning_rate: 1e-3
env_kwargs.max_steps: 20
policy_kwargs.net_arch: [[8]]
policy_kwargs.features_extractor_kwargs: {{features_dim: 8}}
policy_kwargs.rim_kwargs: {{num_units: 3, unit_size: 4, top_k: 2}}
"""
WORKER_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}


def write_grid(folder, steps=128):
    path = Path(folder) / "grid.yaml"
    path.write_text(TINY_GRID.format(steps=steps))
    return path


def load(storage, study_name):
    backend, _ = open_storage(storage)
    return optuna.load_study(study_name=study_name, storage=backend)


def checkpoint_steps(run_dir):
    """The steps of a run directory's checkpoints (``checkpoints/<name>_<prefix>_<step>_steps.zip``)."""
    return [int(p.stem.split("_")[2]) for p in (Path(run_dir) / "checkpoints").glob("*.zip")]


def assert_each_cell_complete_once(study, n_cells, output):
    """Each cell has exactly one COMPLETE trial, nothing else is left, and each run reached its last step."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs[INDEX] for t in complete) == list(range(n_cells))
    assert [t.state for t in study.trials if t.state not in (TrialState.COMPLETE, TrialState.FAIL)] == []
    for trial in complete:
        run_dir = Path(output) / study.study_name / trial.user_attrs[RUN_NAME]
        assert max(checkpoint_steps(run_dir)) == trial.user_attrs[CELL]["n_timesteps"]
    return complete


def start_worker(storage, study_name, output, log):
    command = [sys.executable, str(SCRIPT), "work", "--storage", storage, "--study", study_name]
    command += ["--output", str(output), "--heartbeat", "1", "--grace", "2"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=WORKER_ENV, cwd=ROOT)


def kill_a_worker_mid_trial(storage, study_name, output, workers, timeout=120):
    """SIGKILL the worker of the first running trial that has checkpoints, none of them at its
    last step, and no final model: mid-trial, so that the retry must resume from a checkpoint."""
    pids = {worker.pid: worker for worker in workers}
    backend, _ = open_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=backend)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            run_dir = Path(output) / study_name / trial.user_attrs.get(RUN_NAME, "-")
            pid = int(trial.user_attrs.get(WORKER, "x:0").rsplit(":", 1)[1])
            # Two checkpoints: the first is complete (the second may be half written; resuming skips it).
            # One at the last step would leave the retry nothing to train.
            steps = checkpoint_steps(run_dir)
            saved = len(steps) >= 2 and max(steps) < trial.user_attrs[CELL]["n_timesteps"]
            if pid in pids and saved and not (run_dir / "final_model.zip").exists():
                os.kill(pid, signal.SIGKILL)
                pids[pid].wait()
                return trial.number
        time.sleep(0.1)
    raise AssertionError("no worker reached a checkpoint in time")


def finish(workers, logs, timeout=150):
    for worker in workers:
        worker.wait(timeout=timeout)
    return "\n".join(Path(log.name).read_text() for log in logs)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bindir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 at a free port, stopped and deleted afterwards."""
    pytest.importorskip("psycopg", reason="the sweep extra's PostgreSQL driver psycopg is not installed")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install -y postgresql")
    prefix: list[str] = []
    # Not pytest's tmp_path: its parents are private to root, and the server may not run as root.
    folder = Path(tempfile.mkdtemp(prefix="rim-sweep-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = folder / "data", free_port()
    subprocess.run(
        [*prefix, bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, bindir / "pg_ctl", "-D", data, "-l", folder / "server.log", "-o", options, "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_on_a_journal_file_run_each_cell_once_and_report_aggregates(tmp_path):
    storage, output = str(tmp_path / "sweeps.log"), tmp_path / "runs"
    assert create_grid(storage, "grid", write_grid(tmp_path)) == 4
    assert work(storage, "grid", output, workers=2, heartbeat=1, grace=2) == 0

    study = load(storage, "grid")
    complete = assert_each_cell_complete_once(study, 4, output)
    assert len(study.trials) == 4
    assert len({t.user_attrs[WORKER] for t in complete}) == 2  # both workers took cells

    text = report(
        storage,
        "grid",
        output,
        tmp_path / "rows.json",
        tmp_path / "curves.png",
        threshold=-1.0,
        state_plot_path=tmp_path / "states.png",
    )
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [row["policy"] for row in rows] == ["rim", "lstm"] and all(row["n_seeds"] == 2 for row in rows)
    for row in rows:
        values = [t.value for t in complete if t.user_attrs[CELL]["policy"] == row["policy"]]
        assert row["mean_return"] == pytest.approx(np.mean(values))
        assert row["std_return"] == pytest.approx(np.std(values, ddof=1))
        # Two seeds: the 95% t-interval's half-width is t(0.975, 1) = 12.706 standard errors.
        assert row["ci95_return"] == pytest.approx(12.706 * np.std(values, ddof=1) / np.sqrt(2), rel=1e-4)
        assert 0.0 <= row["success_rate"] <= 1.0
        assert row["steps_to_threshold"] == 64 and row["n_reached"] == 2  # every return is >= -1
        assert "seed" not in row
    # The RIM runs' largest abs(h) from their TensorBoard events (gated read: at most 2); none for the LSTM.
    assert 0.0 < rows[0]["state_abs_max"] <= 2.0 and rows[1]["state_abs_max"] is None
    assert (
        "4/4 complete" in text
        and "| policy | seeds | final return (mean ± 95% CI) | success rate (mean ± 95% CI) |" in text
        and "| largest abs(h) |" in text
    )
    assert text.count("| rim | 2 | ") == 1 and text.count("| lstm | 2 | ") == 1
    image = imread(tmp_path / "curves.png")
    assert image.shape[0] == 400 and image.shape[1] == 600
    assert imread(tmp_path / "states.png").shape[:2] == (400, 700)


def test_two_workers_on_postgresql_finish_the_grid_after_one_is_killed(tmp_path, postgres_url):
    output = tmp_path / "runs"
    assert create_grid(postgres_url, "killed", write_grid(tmp_path)) == 4
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]  # noqa: SIM115 - closed by the OS at exit
    workers = [start_worker(postgres_url, "killed", output, log) for log in logs]
    killed = kill_a_worker_mid_trial(postgres_url, "killed", output, workers)
    text = finish(workers, logs)
    assert sorted(worker.returncode for worker in workers) == [-signal.SIGKILL, 0], text

    study = load(postgres_url, "killed")
    assert_each_cell_complete_once(study, 4, output)
    failed = study.trials[killed]
    assert failed.state == TrialState.FAIL and len(study.trials) == 5
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs[RUN_NAME] == failed.user_attrs[RUN_NAME]  # the same run directory
    assert 0 < retry.user_attrs[START_STEP] < 128  # resumed from a checkpoint, not from zero


def test_a_killed_workers_journal_trial_resumes_from_its_checkpoint(tmp_path, capsys):
    storage, output = str(tmp_path / "sweeps.log"), tmp_path / "runs"
    grid = write_grid(tmp_path, steps=256).read_text().replace("seed: [0, 1]", "seed: 0")
    (tmp_path / "one.yaml").write_text(grid.replace("policy: [rim, lstm]", "policy: rim"))
    assert create_grid(storage, "one", tmp_path / "one.yaml") == 1
    with open(tmp_path / "worker.log", "w") as log:
        first = start_worker(storage, "one", output, log)
        killed = kill_a_worker_mid_trial(storage, "one", output, [first])
    # A second worker (here, in this process) finds the trial running with a stale heartbeat.
    assert work(storage, "one", output, heartbeat=1, grace=2) == 0
    assert f"queued trial {killed} (cell 0) again" in capsys.readouterr().out

    study = load(storage, "one")
    assert_each_cell_complete_once(study, 1, output)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry = study.trials[1]
    assert retry.system_attrs["failed_trial"] == killed
    assert retry.user_attrs[RUN_NAME] == study.trials[0].user_attrs[RUN_NAME]
    assert 0 < retry.user_attrs[START_STEP] < 256


def test_grid_file_lists_are_axes_and_one_element_lists_fixed_values(tmp_path):
    axes, cells = load_grid(write_grid(tmp_path))
    assert axes == ["policy", "seed"]
    assert [(c["policy"], c["seed"]) for c in cells] == [("rim", 0), ("rim", 1), ("lstm", 0), ("lstm", 1)]
    assert cells[0]["policy_kwargs.net_arch"] == [8] and cells[0]["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("", "is empty"),
        ("env: MiniGrid-MemoryS7-v0\nn_step: [16, 32]\n", r"unknown key 'n_step'.*close: n_steps"),
        ("env: MiniGrid-MemoryS7-v0\nseed: []\n", "grid axis 'seed' .* is an empty list"),
        ("env: MiniGrid-MemoryS7-v0\nseed: [0, 0]\n", "repeats a value"),
        ("policy: [rim, lstm]\n", "has no env key"),
        ("env: MiniGrid-MemoryS7-v0\nn_timesteps: 32\neval_freq: 64\n", "eval_freq=64 must be between 1 and"),
    ],
)
def test_bad_grid_is_refused_before_a_study_exists(tmp_path, grid, message):
    (tmp_path / "grid.yaml").write_text(grid)
    storage = str(tmp_path / "sweeps.log")
    with pytest.raises(ValueError, match=message):
        create_grid(storage, "bad", tmp_path / "grid.yaml")
    assert not (tmp_path / "sweeps.log").exists()


def test_bad_storage_and_study_errors_name_the_problem(tmp_path):
    grid = write_grid(tmp_path)
    with pytest.raises(ValueError, match=r"unknown scheme 'mysql'.*postgresql://"):
        create_grid("mysql://user:secret@localhost/db", "s", grid)
    with pytest.raises(ValueError, match="no journal file there"):
        work(str(tmp_path / "missing.log"), "s", tmp_path)
    storage = str(tmp_path / "sweeps.log")
    create_grid(storage, "s", grid)
    with pytest.raises(ValueError, match=r"already exists"):
        create_grid(storage, "s", grid)
    with pytest.raises(ValueError, match=r"study='t' is not in .*studies there: \['s'\]"):
        work(storage, "t", tmp_path)
    with pytest.raises(ValueError, match=r"grace=1 must be .* longer than heartbeat=1"):
        work(storage, "s", tmp_path, heartbeat=1, grace=1)


def test_unreachable_database_is_a_clear_error_without_the_password(tmp_path):
    pytest.importorskip("psycopg", reason="the sweep extra's PostgreSQL driver psycopg is not installed")
    url = f"postgresql://user:secret@127.0.0.1:{free_port()}/sweeps"
    with pytest.raises(ValueError, match=r"cannot reach the database 'postgresql://user:\*\*\*@127") as error:
        create_grid(url, "s", write_grid(tmp_path))
    assert "secret" not in str(error.value)


def test_script_reports_bad_input_with_exit_code_2(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sweep_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "grid.yaml").write_text("")
    assert (
        module.main(
            [
                "create",
                "--storage",
                str(tmp_path / "s.log"),
                "--study",
                "x",
                "--grid",
                str(tmp_path / "grid.yaml"),
            ]
        )
        == 2
    )
    assert "error: grid file" in capsys.readouterr().err


def test_search_samples_each_queued_trial_inside_the_space_and_ranks_by_return(tmp_path):
    space = write_grid(tmp_path).read_text()
    space = space.replace("policy: [rim, lstm]\nseed: [0, 1]\n", "")
    space = space.replace(
        "learning_rate: 1e-3", "learning_rate: {float: [1e-4, 1e-2], log: true}\nn_epochs: [1, 2]"
    )
    space = space.replace("n_epochs: 1\n", "")
    (tmp_path / "space.yaml").write_text(space)
    storage, output = str(tmp_path / "sweeps.log"), tmp_path / "runs"
    assert create_search(storage, "tpe", tmp_path / "space.yaml", n_trials=2, n_startup_trials=1) == 2
    worker = Worker(storage, "tpe", output, heartbeat=1, grace=2, max_retry=3)
    assert isinstance(worker.study.pruner, optuna.pruners.MedianPruner)
    assert isinstance(worker.study.sampler, optuna.samplers.TPESampler)
    assert worker.run() == 0

    study = load(storage, "tpe")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        cell = trial.user_attrs[CELL]
        assert 1e-4 <= cell["learning_rate"] <= 1e-2 and cell["n_epochs"] in (1, 2)
        assert trial.params == {"learning_rate": cell["learning_rate"], "n_epochs": cell["n_epochs"]}
    _, axes, rows, _ = summarize(storage, "tpe", output)
    assert axes == ["learning_rate", "n_epochs"]
    assert [row["mean_return"] for row in rows] == sorted((t.value for t in study.trials), reverse=True)


def test_grid_studies_are_never_pruned(tmp_path):
    storage = str(tmp_path / "sweeps.log")
    create_grid(storage, "grid", write_grid(tmp_path))
    worker = Worker(storage, "grid", tmp_path, heartbeat=1, grace=2, max_retry=3)
    assert isinstance(worker.study.pruner, optuna.pruners.NopPruner)


def one_cell_study(tmp_path, name, steps, **fields):
    """A journal study with one tiny RIM cell (extra grid fields replace the tiny ones)."""
    grid = write_grid(tmp_path, steps=steps).read_text().replace("seed: [0, 1]", "seed: 0")
    grid = grid.replace("policy: [rim, lstm]", "policy: rim")
    for key, value in fields.items():
        grid = re.sub(rf"^{key}: .*$", f"{key}: {value}", grid, flags=re.M)
    (tmp_path / f"{name}.yaml").write_text(grid)
    storage = str(tmp_path / "sweeps.log")
    assert create_grid(storage, name, tmp_path / f"{name}.yaml") == 1
    return storage


def test_a_worker_whose_trial_was_declared_dead_stops_training_at_once(tmp_path):
    storage, output = one_cell_study(tmp_path, "lost", 100_000, eval_freq=50_000), tmp_path / "runs"
    worker = Worker(storage, "lost", output, heartbeat=1, grace=600, max_retry=3)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    checkpoints = output / "lost" / "0000__MiniGrid-MemoryS7-v0__rim__0" / "checkpoints"
    deadline = time.monotonic() + 60
    while not list(checkpoints.glob("*.zip")) and time.monotonic() < deadline:
        time.sleep(0.1)
    study = load(storage, "lost")
    study.tell(0, state=TrialState.FAIL)  # what another worker does to a trial it thinks dead
    declared = time.monotonic()
    thread.join(timeout=30)
    # Without the stop it would train to the next evaluation, 50,000 steps away (minutes).
    assert not thread.is_alive() and time.monotonic() - declared < 15
    saved = max(int(p.stem.split("_")[2]) for p in checkpoints.glob("*.zip"))
    assert saved < 100_000 and not (checkpoints.parent / "final_model.zip").exists()


def test_hand_backs_do_not_spend_the_retry_budget_of_deaths(tmp_path):
    storage = one_cell_study(tmp_path, "budget", 64)
    worker = Worker(storage, "budget", tmp_path / "runs", heartbeat=1, grace=600, max_retry=1)
    study = load(storage, "budget")

    def fail_and_requeue(requeue):
        trial, _ = worker._take()  # the queued copy starts running...
        study.tell(trial.number, state=TrialState.FAIL)  # ...and stops: interrupted or dead
        return requeue.add(study, study.trials[trial.number])

    assert all(fail_and_requeue(worker.hand_back) for _ in range(4))  # four Ctrl-Cs
    assert fail_and_requeue(worker.requeue_dead)  # the first death still has its retry
    assert not fail_and_requeue(worker.requeue_dead)  # the second is over max_retry=1
    retries = study.trials[1:]
    assert [t.user_attrs["deaths"] for t in retries] == [0, 0, 0, 0, 1]
    assert all(t.user_attrs[INDEX] == 0 and t.system_attrs["failed_trial"] == 0 for t in retries)


def test_an_interrupted_cell_resumes_before_later_cells_start(tmp_path):
    storage = str(tmp_path / "sweeps.log")
    assert create_grid(storage, "order", write_grid(tmp_path, steps=64)) == 4  # cells 0-3
    worker = Worker(storage, "order", tmp_path / "runs", heartbeat=1, grace=600, max_retry=3)
    study = load(storage, "order")
    first, _ = worker._take()
    assert first.user_attrs[INDEX] == 0
    study.tell(first.number, state=TrialState.FAIL)  # interrupted: handed back...
    assert worker.hand_back.add(study, study.trials[first.number])  # ...as a new trial, number 4
    again, _ = worker._take()
    assert (again.number, again.user_attrs[INDEX]) == (4, 0)  # before the queued cells 1-3
    assert [worker._take()[0].user_attrs[INDEX] for _ in range(3)] == [1, 2, 3]


def test_dead_workers_are_found_by_heartbeat_changes_not_by_comparing_clocks(tmp_path):
    storage = one_cell_study(tmp_path, "clocks", 64)
    runner = Worker(storage, "clocks", tmp_path / "runs", heartbeat=1, grace=1, max_retry=3)
    watcher = Worker(storage, "clocks", tmp_path / "runs", heartbeat=1, grace=1, max_retry=3)
    _, trial_id = runner._take()
    # The runner's beats are counts: its clock (skewed or not) never enters the comparison.
    runner.backend.set_trial_user_attr(trial_id, "heartbeat", 1)
    watcher._requeue_dead()  # first sight: watched from now on
    time.sleep(1.3)
    runner.backend.set_trial_user_attr(trial_id, "heartbeat", 2)
    watcher._requeue_dead()  # the count moved: alive, though more than grace has passed
    assert [t.state for t in load(storage, "clocks").trials] == [TrialState.RUNNING]
    time.sleep(1.3)
    watcher._requeue_dead()  # no beat for longer than grace on the watcher's own clock
    assert [t.state for t in load(storage, "clocks").trials] == [TrialState.FAIL, TrialState.WAITING]


def test_an_empty_queue_creates_no_trial(tmp_path):
    storage = one_cell_study(tmp_path, "empty", 64)
    first = Worker(storage, "empty", tmp_path / "runs", heartbeat=1, grace=600, max_retry=3)
    second = Worker(storage, "empty", tmp_path / "runs", heartbeat=1, grace=600, max_retry=3)
    assert first._take() is not None
    assert second._take() is None  # the other worker took the last queued trial
    assert len(load(storage, "empty").trials) == 1


def test_a_pruned_search_trial_stops_training_at_its_evaluation(tmp_path, monkeypatch):
    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: True)
    storage = one_cell_study(tmp_path, "pruned", 256, eval_freq=64)
    output = tmp_path / "runs"
    assert work(storage, "pruned", output, heartbeat=1, grace=600) == 0
    (trial,) = load(storage, "pruned").trials
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {
        64: trial.intermediate_values[64]
    }
    run_dir = output / "pruned" / trial.user_attrs[RUN_NAME]
    assert not (run_dir / "final_model.zip").exists()
    assert max(int(p.stem.split("_")[2]) for p in (run_dir / "checkpoints").glob("*.zip")) <= 64


def test_a_cell_that_raised_runs_again_only_when_asked(tmp_path, monkeypatch, capsys):
    import rim_agents.sweep.worker as sweep_module  # train is looked up where the worker calls it

    storage, output = one_cell_study(tmp_path, "raised", 64), tmp_path / "runs"
    real_train = sweep_module.train

    def broken_train(*args, **kwargs):
        raise RuntimeError("no space left on device")

    monkeypatch.setattr(sweep_module, "train", broken_train)
    assert work(storage, "raised", output, heartbeat=1, grace=600) == 1  # a failed cell is a failure
    assert "sweep 'raised': 0/1 complete, 1 failed [0]" in capsys.readouterr().out
    (failed,) = load(storage, "raised").trials
    assert failed.state == TrialState.FAIL and "no space left" in failed.user_attrs["error"]
    assert "cell 0: RuntimeError: no space left on device" in report(storage, "raised", output)
    # Without the flag a failed cell stays failed: the same error would most likely recur.
    assert work(storage, "raised", output, heartbeat=1, grace=600) == 1
    assert len(load(storage, "raised").trials) == 1

    monkeypatch.setattr(sweep_module, "train", real_train)  # the cause is fixed
    assert work(storage, "raised", output, heartbeat=1, grace=600, retry_failed=True) == 0
    assert "sweep 'raised': 1/1 complete\n" in capsys.readouterr().out
    first, retry = load(storage, "raised").trials
    assert (first.state, retry.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert retry.user_attrs[INDEX] == 0 and retry.user_attrs[RUN_NAME] == first.user_attrs[RUN_NAME]
    assert (output / "raised" / retry.user_attrs[RUN_NAME] / "final_model.zip").is_file()
    # A finished cell is never queued again.
    assert work(storage, "raised", output, heartbeat=1, grace=600, retry_failed=True) == 0
    assert len(load(storage, "raised").trials) == 2
