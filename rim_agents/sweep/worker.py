"""Step 2 of a sweep, ``work``: worker processes that take queued trials and train them.

:func:`work` starts the workers; each :class:`Worker` takes a WAITING trial by
compare-and-set, turns its cell into a configuration, resumes the run directory's latest
whole checkpoint (:func:`rim_agents.checkpoints.resume_point`) and runs :func:`rim_agents.training.train`,
reporting evaluation returns to Optuna. While a trial runs its worker beats; another worker
fails and queues again a trial whose beat stopped, and the worker that lost it stops within
one step (:class:`_StopWhenLost`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import torch as th
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import FrozenTrial, Trial, TrialState
from stable_baselines3.common.callbacks import BaseCallback

from rim_agents.checkpoints import resume_point
from rim_agents.checks import check_writable_folder
from rim_agents.run_state import terminate_as_interrupt
from rim_agents.sweep.grid import cell_config, suggest
from rim_agents.sweep.storage import (
    CELL,
    ERROR,
    HEARTBEAT,
    INDEX,
    RUN_NAME,
    START_STEP,
    SUCCESS,
    WORKER,
    Requeue,
    describe_storage,
    load_study,
    lost_cells,
    open_storage,
    sweep_trials,
)
from rim_agents.sweep.summary import read_evaluations
from rim_agents.training import run_folder_env, train


class _TrialLost(Exception):
    """The running trial was failed by another worker (declared dead): stop training at once."""


class _StopWhenLost(BaseCallback):
    """Stop training, within one environment step of noticing, once the trial is not ours.

    Another worker fails a trial whose heartbeat it has not seen change for ``grace``
    seconds and queues a retry that resumes the same run directory; two processes must
    never write there at once. The trial's state is read from the storage at most every
    ``period`` seconds; once it is no longer RUNNING, :class:`_TrialLost` ends ``learn``
    before any further checkpoint or evaluation is written.
    """

    def __init__(self, backend: BaseStorage, trial_id: int, period: float) -> None:
        super().__init__()
        self.backend, self.trial_id, self.period = backend, trial_id, period
        self._next = time.monotonic() + period

    def _on_step(self) -> bool:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.period
            if self.backend.get_trial(self.trial_id).state != TrialState.RUNNING:
                raise _TrialLost(f"trial {self.trial_id} was failed by another worker")
        return True


class Worker:
    """Takes queued trials of a sweep until none is queued or running, then returns.

    A trial is taken from the queue by a compare-and-set of its state (WAITING -> RUNNING),
    so two workers never take the same one and an empty queue creates no trial. While it
    runs, the worker beats: a counter in the trial's ``heartbeat`` attribute (journal) or
    Optuna's heartbeat (database, timed by the database's clock). A journal trial whose
    counter another worker has not seen change for ``grace`` seconds of that worker's own
    monotonic clock is failed and queued again, so clocks of different machines never need
    to agree; ``recover`` queues all running trials at once. The retry carries the run name,
    so it resumes the run directory's latest checkpoint. A worker whose trial was failed this
    way stops training within one step of noticing (:class:`_TrialLost`).

    :param storage: journal file path or PostgreSQL URL
    :param study_name: the study made by ``create``
    :param output: parent of the study's folder of run directories (``{output}/{study_name}/...``)
    :param heartbeat: seconds between heartbeats of the running trial (also the idle poll period)
    :param grace: seconds without a heartbeat after which a running trial counts as dead
    :param max_retry: times one cell is queued again after its worker died (hand-backs after
        Ctrl-C or SIGTERM do not count)
    """

    def __init__(
        self, storage: str, study_name: str, output: str | Path, heartbeat: int, grace: int, max_retry: int
    ) -> None:
        self.backend, self.journal = open_storage(
            storage, heartbeat=heartbeat, grace=grace, max_retry=max_retry
        )
        self.study, self.spec = load_study(self.backend, study_name, describe_storage(storage))
        self.study_id = self.backend.get_study_id_from_name(study_name)
        self.run_root = Path(output) / study_name
        self.heartbeat = heartbeat
        self.grace = grace
        self.requeue_dead = Requeue(death=True, max_deaths=max_retry)
        self.hand_back = Requeue(death=False)
        self.tag = f"{socket.gethostname()}:{os.getpid()}"
        self.current: int | None = None
        # Journal: the heartbeat counter last seen for each running trial, and when (monotonic).
        self._beats: dict[int, tuple[Any, float]] = {}

    @contextlib.contextmanager
    def _requeue_lock(self) -> Iterator[None]:
        if self.journal is None:  # a database fails a trial atomically: only one worker wins
            yield
            return
        # Journal appends are not compare-and-set: without this lock two workers could both
        # fail the same dead trial and queue it twice.
        lock = JournalFileSymlinkLock(f"{self.journal}.requeue")
        lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _fail_and_requeue(self, trial: FrozenTrial, requeue: Requeue) -> bool:
        try:
            failed = self.study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            return False  # finished, or failed by another worker, meanwhile
        if failed.state != TrialState.FAIL or not requeue.add(self.study, failed):
            return False
        print(f"[{self.tag}] queued trial {trial.number} (cell {trial.user_attrs[INDEX]}) again", flush=True)
        return True

    def recover(self) -> int:
        """Queue every running trial again now; only safe when no other worker of the sweep is alive.

        :return: the number of trials queued again
        """
        with self._requeue_lock():
            return sum(
                self._fail_and_requeue(t, self.requeue_dead)
                for t in sweep_trials(self.study, (TrialState.RUNNING,))
            )

    def retry_failed(self) -> int:
        """Queue again every cell whose last attempt raised an error and that has no attempt
        queued, running or finished: after the cause is fixed, the sweep finishes the cells
        it lost. Each retry resumes its run directory's latest checkpoint.

        :return: the number of cells queued again
        """
        with self._requeue_lock():
            attempts: dict[int, list[FrozenTrial]] = {}
            for trial in sweep_trials(self.study):
                attempts.setdefault(trial.user_attrs[INDEX], []).append(trial)
            count = 0
            for cell in sorted(attempts):
                last = max(attempts[cell], key=lambda t: t.number)
                if last.state == TrialState.FAIL and ERROR in last.user_attrs:
                    self.hand_back.add(self.study, last)
                    print(f"[{self.tag}] queued cell {cell} again ({last.user_attrs[ERROR]})", flush=True)
                    count += 1
            return count

    def _requeue_dead(self) -> None:
        if self.journal is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
            return
        now = time.monotonic()
        with self._requeue_lock():
            running = sweep_trials(self.study, (TrialState.RUNNING,))
            self._beats = {n: seen for n, seen in self._beats.items() if n in {t.number for t in running}}
            for trial in running:
                beat = trial.user_attrs.get(HEARTBEAT)
                seen = self._beats.get(trial.number)
                if seen is None or seen[0] != beat:
                    self._beats[trial.number] = (beat, now)  # alive, or not watched long enough yet
                elif now - seen[1] > self.grace:
                    self._fail_and_requeue(trial, self.requeue_dead)

    def _take(self) -> tuple[Trial, int] | None:
        """Take a queued trial (WAITING -> RUNNING, compare-and-set): the trial and its storage id,
        or None when none is left.

        The lowest cell first, so an interrupted cell queued again (a newer trial of an earlier
        cell) resumes before later cells start: fewer half-trained runs wait at any time, which
        is what a sweep carried from one machine to the next has to save."""
        waiting = sweep_trials(self.study, (TrialState.WAITING,))
        for frozen in sorted(waiting, key=lambda t: (t.user_attrs[INDEX], t.number)):
            trial_id = self.backend.get_trial_id_from_study_id_trial_number(self.study_id, frozen.number)
            try:
                if self.backend.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    return Trial(self.study, trial_id), trial_id
            except UpdateFinishedTrialError:
                continue  # another worker took it and finished it meanwhile
        return None

    def run(self) -> int:
        """Take trials until the sweep is done: 0, or 130 when interrupted (its trial is queued again)."""
        th.set_num_threads(1)
        try:
            while True:
                self._requeue_dead()
                taken = self._take()
                if taken is not None:
                    self._run_trial(*taken)
                    self.current = None
                elif sweep_trials(self.study, (TrialState.RUNNING,)):
                    time.sleep(self.heartbeat)  # others are running: wait in case one dies
                else:
                    return 0
        except KeyboardInterrupt:
            self._hand_back()
            return 130

    def _run_trial(self, trial: Trial, trial_id: int) -> None:
        state, value = TrialState.FAIL, None
        try:
            value = self._objective(trial, trial_id)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except _TrialLost:
            print(f"[{self.tag}] trial {trial.number} was declared dead and queued again", flush=True)
            return
        except Exception as error:  # the trial fails; the worker goes on with the next one
            print(f"[{self.tag}] trial {trial.number} failed: {type(error).__name__}: {error}", flush=True)
        try:
            self.study.tell(trial, value, state=state)
        except UpdateFinishedTrialError:
            print(f"[{self.tag}] trial {trial.number} was declared dead and queued again", flush=True)

    def _hand_back(self) -> None:
        if self.current is None:
            return
        trial = self.study.get_trials(deepcopy=False)[self.current]
        if trial.state == TrialState.RUNNING:
            print(f"[{self.tag}] interrupted: handing trial {trial.number} back", flush=True)
            with self._requeue_lock():
                self._fail_and_requeue(trial, self.hand_back)

    @contextlib.contextmanager
    def _beating(self, trial: Trial, trial_id: int) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            count = 0
            while True:
                count += 1
                try:
                    if self.journal is None:
                        self.backend.record_heartbeat(trial_id)  # type: ignore[attr-defined]
                    else:
                        self.backend.set_trial_user_attr(trial_id, HEARTBEAT, count)
                except UpdateFinishedTrialError:
                    return  # declared dead by another worker; _StopWhenLost stops the training
                if stop.wait(self.heartbeat):
                    return

        thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _objective(self, trial: Trial, trial_id: int) -> float:
        self.current = trial.number
        attrs = trial.user_attrs
        try:
            cell = attrs.get(CELL)
            if cell is None:  # a search trial's first attempt: sample now, from the trials done so far
                cell = {**self.spec["fixed"]}
                cell.update({key: suggest(trial, key, d) for key, d in self.spec["space"].items()})
                trial.set_user_attr(CELL, cell)
            config = cell_config(cell, self.run_root)
            # A retry carries its run name, also one from before flat names (``0000__MinAtar/...``).
            run_name = (
                attrs.get(RUN_NAME)
                or f"{attrs[INDEX]:04d}__{run_folder_env(config.env)}__{config.policy}__{config.seed}"
            )
            run_dir = self.run_root / run_name
            checkpoint, start = resume_point(run_dir)
            trial.set_user_attr(RUN_NAME, run_name)
            trial.set_user_attr(START_STEP, start)
            trial.set_user_attr(WORKER, self.tag)
            print(
                f"[{self.tag}] trial {trial.number} (cell {attrs[INDEX]}): {run_dir} from step {start}",
                flush=True,
            )

            def report(num_timesteps: int, mean_return: float, success_rate: float | None) -> bool:
                trial.report(mean_return, num_timesteps)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"evaluation return {mean_return:.3g} at step {num_timesteps}")
                return True

            lost = _StopWhenLost(self.backend, trial_id, self.heartbeat)
            with self._beating(trial, trial_id):
                train(config, run_dir=run_dir, checkpoint=checkpoint, report=report, callbacks=[lost])
            _, returns, successes = read_evaluations(run_dir)
            if successes is not None:
                trial.set_user_attr(SUCCESS, float(successes[-1]))
            return float(returns[-1])
        except (optuna.TrialPruned, _TrialLost):
            raise
        except Exception as error:
            trial.set_user_attr(ERROR, f"{type(error).__name__}: {error}"[:1000])
            raise


def _worker_process(
    storage: str, study_name: str, output: str, heartbeat: int, grace: int, max_retry: int
) -> None:
    with terminate_as_interrupt():  # terminate hands the trial back like Ctrl-C
        code = Worker(storage, study_name, output, heartbeat, grace, max_retry).run()
    raise SystemExit(code)


def work(
    storage: str,
    study_name: str,
    output: str | Path = "logs",
    workers: int = 1,
    heartbeat: int = 30,
    grace: int = 120,
    recover: bool = False,
    max_retry: int = 3,
    retry_failed: bool = False,
) -> int:
    """Run ``workers`` worker processes here until the sweep has nothing queued or running.

    Each worker uses one torch thread and, where there are GPUs, one GPU (round robin). The
    same call on other machines with the same PostgreSQL URL and the same (shared) output
    folder joins the sweep.

    :param storage: journal file path or PostgreSQL URL
    :param study_name: the study made by ``create``
    :param output: folder holding ``{study_name}/{run name}`` run directories
    :param workers: worker processes; 1 works in this process
    :param heartbeat: seconds between heartbeats of a running trial
    :param grace: seconds without a heartbeat after which a trial counts as dead and is queued again
    :param recover: first queue again every trial left running (only when no worker of the sweep is alive)
    :param max_retry: times one cell is queued again after its worker died
    :param retry_failed: first queue again every cell whose last attempt raised an error (a
        trial that fails is not retried on its own: the same error would recur)
    :return: 0 when done, 130 when interrupted, 1 when a worker process died or a cell failed
        (it prints a summary line either way)
    """
    for name, value, low in (
        ("workers", workers, 1),
        ("heartbeat", heartbeat, 1),
        ("max_retry", max_retry, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if isinstance(grace, bool) or not isinstance(grace, int) or grace <= heartbeat:
        raise ValueError(
            f"grace={grace!r} must be an integer number of seconds longer than heartbeat={heartbeat}"
        )
    check_writable_folder(output, "--output")  # here, not as a failed cell per trial
    worker = Worker(storage, study_name, output, heartbeat, grace, max_retry)
    worker_args = (storage, study_name, str(output), heartbeat, grace, max_retry)
    code = _run_workers(worker, workers, recover, retry_failed, worker_args)
    lost = lost_cells(sweep_trials(worker.study))
    complete = {t.user_attrs[INDEX] for t in sweep_trials(worker.study, (TrialState.COMPLETE,))}
    line = f"sweep {study_name!r}: {len(complete)}/{worker.spec['n_items']} complete"
    if lost:
        line += f", {len(lost)} failed {sorted(lost)}: `sweep.py report` shows their errors"
    print(line if code != 130 else f"interrupted; {line}", flush=True)
    return 1 if code == 0 and lost else code


def _run_workers(
    worker: Worker, workers: int, recover: bool, retry_failed: bool, worker_args: tuple[Any, ...]
) -> int:
    """:func:`work` after its checks: the exit status of this process's worker or worker processes."""
    if recover:
        print(f"recovered {worker.recover()} running trial(s)", flush=True)
    if retry_failed:
        print(f"queued {worker.retry_failed()} failed cell(s) again", flush=True)
    if workers == 1:
        with terminate_as_interrupt():  # hand the trial back
            return worker.run()
    devices = _visible_gpus()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
    processes = []
    saved = dict(os.environ)
    try:
        for index in range(workers):
            os.environ["OMP_NUM_THREADS"] = "1"
            os.environ["MKL_NUM_THREADS"] = "1"
            if devices:
                os.environ["CUDA_VISIBLE_DEVICES"] = devices[index % len(devices)]
            process = context.Process(
                target=_worker_process,
                args=worker_args,
                name=f"sweep-worker-{index}",
            )
            process.start()
            processes.append(process)
    finally:
        os.environ.clear()
        os.environ.update(saved)

    def forward(signum: int, frame: Any) -> None:
        for process in processes:
            process.terminate()

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        for process in processes:
            with contextlib.suppress(
                KeyboardInterrupt
            ):  # the workers got Ctrl-C too and hand back their trials
                process.join()
            process.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    codes = [process.exitcode for process in processes]
    for process, code in zip(processes, codes, strict=True):
        if code not in (0, 130):
            print(f"{process.name} (pid {process.pid}) ended with exit code {code}", flush=True)
    if any(code not in (0, 130) for code in codes):
        return 1
    return 130 if 130 in codes else 0


def _visible_gpus() -> list[str]:
    if not th.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [device.strip() for device in visible.split(",") if device.strip()]
    return [str(index) for index in range(th.cuda.device_count())]
