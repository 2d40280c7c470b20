"""The copying task: data generator, model, trainer and command line."""

from __future__ import annotations

import importlib.util
import json
import re
import signal
from pathlib import Path

import pytest
import torch as th

import rim_agents.copying as copying
from envs.copying import DELIMITER, copying_batch, recall_slice, sequence_length
from rim_agents.copying import (
    ConfigError,
    CopyingConfig,
    RunExistsError,
    TrainingInterrupted,
    build_model,
    build_scheduler,
    evaluate,
    fixed_test_batches,
    load_checkpoint,
    resumed_config,
    train_copying,
    train_epoch,
)
from rim_agents.nn import RIM

REPO = Path(__file__).resolve().parents[1]
TINY = dict(
    train_length=3,
    test_lengths=(3, 6),
    epochs=1,
    batches_per_epoch=2,
    batch_size=4,
    eval_batches=1,
    embedding_size=8,
    num_units=3,
    unit_size=8,
    top_k=2,
    hidden_size=16,
)


def test_batch_has_gap_plus_20_steps_and_time_major_shape():
    inputs, targets = copying_batch(batch_size=5, gap=7)
    assert sequence_length(7) == 27
    assert inputs.shape == targets.shape == (27, 5)
    assert inputs.dtype == targets.dtype == th.int64


def test_digits_are_1_to_8_and_everything_else_is_blank_or_the_delimiter():
    inputs, targets = copying_batch(batch_size=2000, gap=4, generator=th.Generator().manual_seed(0))
    digits = inputs[:10]
    assert digits.min().item() == 1
    assert digits.max().item() == 8
    # every digit value turns up: uniform over 1..8, 20000 draws
    assert set(digits.unique().tolist()) == set(range(1, 9))
    assert (inputs[10:14] == 0).all()
    assert (inputs[15:] == 0).all()
    assert (targets[:14] == 0).all()


def test_delimiter_sits_right_after_the_gap_and_nowhere_else():
    gap = 6
    inputs, _ = copying_batch(batch_size=3, gap=gap)
    positions = (inputs == DELIMITER).nonzero()[:, 0]
    assert positions.tolist() == [gap + 10] * 3


def test_targets_at_the_last_ten_steps_are_the_first_ten_inputs():
    gap = 5
    inputs, targets = copying_batch(batch_size=8, gap=gap)
    assert recall_slice(gap) == slice(15, 25)
    assert th.equal(targets[-10:], inputs[:10])
    assert th.equal(targets[recall_slice(gap)], inputs[:10])


def test_same_seed_gives_the_same_batch_and_another_seed_does_not():
    first = copying_batch(16, 3, th.Generator().manual_seed(42))
    again = copying_batch(16, 3, th.Generator().manual_seed(42))
    other = copying_batch(16, 3, th.Generator().manual_seed(43))
    assert th.equal(first[0], again[0]) and th.equal(first[1], again[1])
    assert not th.equal(first[0], other[0])


def test_generator_rejects_non_positive_gap_and_batch():
    with pytest.raises(ValueError, match="gap must be a positive integer, got 0"):
        copying_batch(4, 0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -1"):
        copying_batch(-1, 3)


def test_test_set_depends_only_on_seed_and_gap():
    config_a = CopyingConfig(**{**TINY, "test_lengths": (3, 6)})
    config_b = CopyingConfig(**{**TINY, "test_lengths": (6,), "model": "lstm"})
    assert th.equal(fixed_test_batches(config_a, 6)[0][0], fixed_test_batches(config_b, 6)[0][0])
    assert not th.equal(
        fixed_test_batches(config_a, 6)[0][0][:10], fixed_test_batches(config_a, 3)[0][0][:10]
    )


@pytest.mark.parametrize("model", ["rim", "lstm"])
def test_a_few_training_steps_reduce_the_loss(model):
    config = CopyingConfig(**{**TINY, "model": model, "batches_per_epoch": 25, "batch_size": 16, "lr": 1e-2})
    net = build_model(config)
    optimizer = th.optim.Adam(net.parameters(), lr=config.lr)
    losses = train_epoch(net, optimizer, config, th.Generator().manual_seed(0))
    assert len(losses) == 25
    # from ~ln(9) = 2.2 at initialisation; the blanks alone are learned within a few steps
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_training_runs_in_train_mode_after_an_evaluation():
    config = CopyingConfig(**TINY)
    net = build_model(config)
    evaluate(net, fixed_test_batches(config, 3), 3)
    assert not net.training
    modes = []
    net.register_forward_pre_hook(lambda module, args: modes.append((module.training, module.core.training)))
    train_epoch(net, th.optim.Adam(net.parameters()), config, th.Generator().manual_seed(0))
    assert modes == [(True, True)] * config.batches_per_epoch


def test_evaluation_is_deterministic_despite_dropout():
    config = CopyingConfig(**TINY)
    net = build_model(config)
    net.train()
    batches = fixed_test_batches(config, 6)
    assert evaluate(net, batches, 6)[0] == evaluate(net, batches, 6)[0]


def test_metrics_of_a_perfect_copier_are_zero_ce_and_full_accuracy():
    gap = 4
    batches = fixed_test_batches(CopyingConfig(**TINY), gap)

    class Oracle(th.nn.Module):
        """Puts all its probability on the right answer: blank, then the first ten inputs."""

        def __init__(self):
            super().__init__()
            self.core = th.nn.Identity()

        def forward(self, tokens):
            targets = th.zeros_like(tokens)
            targets[recall_slice(gap)] = tokens[:10]
            return 100.0 * th.nn.functional.one_hot(targets, 9).float()

    metrics, activity = evaluate(Oracle(), batches, gap)
    assert metrics == {"ce": 0.0, "ce_all_positions": 0.0, "digit_acc": 1.0, "seq_acc": 1.0}
    assert activity is None


def test_results_json_has_the_promised_keys(tmp_path):
    threads = th.get_num_threads()
    results = train_copying(CopyingConfig(**TINY, num_threads=2), tmp_path, progress=False)
    assert th.get_num_threads() == threads, "train_copying must restore torch's thread count"
    written = json.loads((tmp_path / "results.json").read_text())
    assert written == results
    assert {"model", "train_length", "config", "results"} <= written.keys()
    assert written["model"] == "rim" and written["train_length"] == 3
    assert written["config"]["test_lengths"] == [3, 6] and written["config"]["top_k"] == 2
    assert set(written["results"]) == {"3", "6"}
    for metrics in written["results"].values():
        assert {"ce", "ce_all_positions", "digit_acc", "seq_acc"} == metrics.keys()
        assert 0.0 <= metrics["digit_acc"] <= 1.0 and metrics["ce"] > 0.0
    checkpoint = th.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert {
        "model", "optimizer", "scheduler", "generator", "torch_rng", "config", "epoch", "batch", "history",
        "wall_time_s",
    } == checkpoint.keys()  # fmt: skip
    assert checkpoint["epoch"] == 1 and checkpoint["batch"] == 0
    assert checkpoint["scheduler"]["last_epoch"] == 2
    assert written["finished"] and [entry["epoch"] for entry in written["history"]] == [1]
    assert written["history"][0]["results"] == written["results"]
    assert any(path.name.startswith("events.out.tfevents") for path in tmp_path.iterdir())


def test_rim_activation_frequency_averages_to_top_k_over_num_units():
    config = CopyingConfig(**TINY)
    _, activity = evaluate(build_model(config), fixed_test_batches(config, 3), 3)
    assert activity is not None and activity.shape == (1, 3)
    assert activity.sum().item() == pytest.approx(config.top_k)


def test_model_gets_the_configured_attention_dropouts():
    core = build_model(CopyingConfig(**TINY, input_dropout=0.2, comm_dropout=0.3)).core
    assert isinstance(core, RIM)
    cell = core.layers[0]
    assert (cell.input_attention.dropout, cell.communication.dropout) == (0.2, 0.3)


def test_cosine_schedule_falls_from_lr_to_zero_over_all_updates_and_constant_stays():
    config = CopyingConfig(**{**TINY, "epochs": 2, "batches_per_epoch": 5, "lr": 0.01})
    net = build_model(config)
    optimizer = th.optim.Adam(net.parameters(), lr=config.lr)
    scheduler = build_scheduler(optimizer, config)
    assert scheduler is not None
    rates = [optimizer.param_groups[0]["lr"]]
    generator = th.Generator().manual_seed(0)
    for _ in range(config.epochs):
        train_epoch(net, optimizer, config, generator, scheduler=scheduler)
        rates.append(optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([0.01, 0.005, 0.0], abs=1e-12)
    constant = CopyingConfig(**{**TINY, "lr_schedule": "constant"})
    assert build_scheduler(th.optim.Adam(net.parameters(), lr=constant.lr), constant) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"top_k": 4}, r"top_k must be an integer in \[1, num_units=3\], got 4"),
        ({"train_length": 0}, "train_length must be a positive integer, got 0"),
        ({"test_lengths": (5, -1)}, "test_lengths must be one or more positive integers"),
        ({"model": "gru"}, "model must be one of rim, lstm, got 'gru'"),
        ({"cell": "rnn"}, "cell must be one of lstm, gru, got 'rnn'"),
        ({"lr": 0.0}, "lr must be a positive finite number, got 0.0"),
        ({"lr_schedule": "linear"}, "lr_schedule must be one of constant, cosine, got 'linear'"),
        ({"input_dropout": 1.0}, r"input_dropout must be a number in \[0, 1\), got 1.0"),
        ({"comm_dropout": -0.1}, r"comm_dropout must be a number in \[0, 1\), got -0.1"),
        ({"seed": -1}, "seed must be a non-negative integer, got -1"),
        ({"num_threads": 0}, "num_threads must be a positive integer, got 0"),
        ({"device": "gpu0"}, "device must be a torch device such as cpu or cuda, got 'gpu0'"),
    ],
)
def test_config_rejects_bad_values_naming_field_value_and_allowed(change, message):
    with pytest.raises(ConfigError, match=message):
        CopyingConfig(**{**TINY, **change})


def load_script():
    spec = importlib.util.spec_from_file_location(
        "train_copying_script", REPO / "scripts" / "train_copying.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-units", "3", "--top-k", "5"], r"--top-k must be an integer in \[1, --num-units=3\], got 5"),
        (["--train-length", "0"], "--train-length must be a positive integer, got 0"),
        (["--test-lengths", "50", "-3"], "--test-lengths must be one or more positive integers"),
        (
            ["--model", "transformer"],
            r"--model: invalid choice: 'transformer' \(choose from '?rim'?, '?lstm'?\)",
        ),
        (["--cell", "rnn"], r"--cell: invalid choice: 'rnn' \(choose from '?lstm'?, '?gru'?\)"),
        (["--input-dropout", "1.5"], r"--input-dropout must be a number in \[0, 1\), got 1.5"),
        (["--lr-schedule", "step"], r"--lr-schedule: invalid choice: 'step'"),
    ],
)
def test_script_rejects_bad_flags_naming_the_flag(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args(args)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_script_paper_flag_gives_the_paper_configuration_and_flags_override_it():
    config, *_ = load_script().parse_args(["--paper", "--model", "lstm", "--epochs", "3"])
    assert (config.model, config.train_length, config.test_lengths) == ("lstm", 50, (50, 100, 200))
    assert (config.hidden_size, config.num_units, config.unit_size, config.top_k) == (600, 6, 100, 4)
    assert (config.batch_size, config.lr, config.lr_schedule, config.epochs) == (64, 1e-3, "constant", 3)
    assert (config.input_dropout, config.comm_dropout) == (0.1, 0.1)


def test_script_prints_a_markdown_table_and_writes_results(tmp_path, capsys):
    load_script().main(
        [
            "--model", "lstm", "--train-length", "2", "--test-lengths", "2", "4", "--epochs", "1",
            "--batches-per-epoch", "2", "--batch-size", "4", "--eval-batches", "1", "--hidden-size", "8",
            "--embedding-size", "4", "--output", str(tmp_path), "--no-progress",
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert (
        "| gap | length | CE recall (ours) | CE all positions (official) | digit acc | seq acc |" in printed
    )
    assert "| 2 (train) | 22 |" in printed and "| 4 | 24 |" in printed
    assert json.loads((tmp_path / "results.json").read_text())["model"] == "lstm"


# Dropout and a cosine schedule, so that the torch RNG and the schedule's state both matter.
RESUMABLE = {**TINY, "epochs": 3, "batches_per_epoch": 3, "input_dropout": 0.2, "comm_dropout": 0.2}


def ctrl_c_at_batch(monkeypatch, number, test_batches, stop=signal.SIGINT):
    """Send ``stop`` (SIGINT: Ctrl-C) to this process while the trainer draws its ``number``-th
    training batch (the fixed test sets, ``test_batches`` batches in all, are drawn first)."""
    drawn = 0

    def batch_then_ctrl_c(*args, **kwargs):
        nonlocal drawn
        drawn += 1
        if drawn == test_batches + number:
            signal.raise_signal(stop)
        return copying_batch(*args, **kwargs)

    monkeypatch.setattr(copying, "copying_batch", batch_then_ctrl_c)


def same_run(first, second):
    """Two run folders hold the same weights, optimizer state and evaluation history, bit for bit."""
    a, b = load_checkpoint(first), load_checkpoint(second)
    for name in a["model"]:
        assert th.equal(a["model"][name], b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert th.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert a["scheduler"] == b["scheduler"]
    assert [entry["results"] for entry in a["history"]] == [entry["results"] for entry in b["history"]]
    assert (a["epoch"], a["batch"]) == (b["epoch"], b["batch"])


@pytest.mark.parametrize("model", ["rim", "lstm"])
@pytest.mark.parametrize("stop_at_batch", [2, 3, 5])
def test_a_run_stopped_by_ctrl_c_and_resumed_equals_an_uninterrupted_one(
    tmp_path, monkeypatch, model, stop_at_batch
):
    """Batch 2 stops mid-epoch, 3 at an epoch's last update (its evaluation still runs), 5 in the next."""
    config = CopyingConfig(**{**RESUMABLE, "model": model})
    train_copying(config, tmp_path / "whole", progress=False)

    with monkeypatch.context() as patch:
        ctrl_c_at_batch(patch, stop_at_batch, test_batches=2)
        with pytest.raises(TrainingInterrupted) as stop:
            train_copying(config, tmp_path / "parts", progress=False)
    assert stop.value.update == stop_at_batch
    saved = load_checkpoint(tmp_path / "parts")
    assert saved["epoch"] * 3 + saved["batch"] == stop_at_batch
    partial_results = tmp_path / "parts" / "results.json"
    # written after each finished epoch, unfinished until the last
    assert partial_results.exists() == (stop_at_batch >= 3)
    assert not partial_results.exists() or not json.loads(partial_results.read_text())["finished"]

    results = train_copying(resumed_config(saved), tmp_path / "parts", progress=False, resume=True)
    assert results["finished"] and len(results["history"]) == 3
    same_run(tmp_path / "whole", tmp_path / "parts")
    assert results["results"] == json.loads((tmp_path / "whole" / "results.json").read_text())["results"]


def test_sigterm_stops_and_saves_like_ctrl_c_and_restores_the_handlers(tmp_path, monkeypatch):
    """kill, a stopped machine, a background job (which ignores SIGINT): the same clean stop."""
    config = CopyingConfig(**RESUMABLE)
    train_copying(config, tmp_path / "whole", progress=False)
    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        ctrl_c_at_batch(patch, 2, test_batches=2, stop=signal.SIGTERM)
        with pytest.raises(TrainingInterrupted) as stop:
            train_copying(config, tmp_path / "parts", progress=False)
    assert stop.value.update == 2 and signal.getsignal(signal.SIGTERM) is before
    train_copying(
        resumed_config(load_checkpoint(tmp_path / "parts")), tmp_path / "parts", progress=False, resume=True
    )
    same_run(tmp_path / "whole", tmp_path / "parts")


def test_ctrl_c_during_the_first_evaluation_keeps_the_finished_epoch(tmp_path, monkeypatch):
    """The flag is read between updates and after each epoch's evaluation and checkpoint."""
    config = CopyingConfig(**RESUMABLE)
    train_copying(config, tmp_path / "whole", progress=False)
    real_evaluate, calls = copying.evaluate, 0

    def evaluate_then_ctrl_c(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            signal.raise_signal(signal.SIGINT)
        return real_evaluate(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(copying, "evaluate", evaluate_then_ctrl_c)
        with pytest.raises(TrainingInterrupted):
            train_copying(config, tmp_path / "parts", progress=False)
    saved = load_checkpoint(tmp_path / "parts")
    assert (saved["epoch"], saved["batch"], len(saved["history"])) == (1, 0, 1)
    train_copying(resumed_config(saved), tmp_path / "parts", progress=False, resume=True)
    same_run(tmp_path / "whole", tmp_path / "parts")


def test_a_finished_constant_rate_run_continues_to_more_epochs_like_a_longer_run(tmp_path):
    short = CopyingConfig(**{**RESUMABLE, "lr_schedule": "constant", "epochs": 1})
    train_copying(short, tmp_path / "parts", progress=False)
    longer = resumed_config(load_checkpoint(tmp_path / "parts"), epochs=2)
    assert longer.epochs == 2
    train_copying(longer, tmp_path / "parts", progress=False, resume=True)
    train_copying(CopyingConfig(**{**RESUMABLE, "lr_schedule": "constant", "epochs": 2}), tmp_path / "whole",
                  progress=False)  # fmt: skip
    same_run(tmp_path / "whole", tmp_path / "parts")


def test_a_cosine_run_refuses_a_new_number_of_epochs_on_resume(tmp_path):
    train_copying(CopyingConfig(**{**RESUMABLE, "epochs": 1}), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"epochs must be 1 when resuming a run with lr_schedule=cosine"):
        resumed_config(load_checkpoint(tmp_path), epochs=2)


def test_a_new_run_refuses_a_folder_that_holds_one_and_changes_nothing(tmp_path):
    train_copying(CopyingConfig(**TINY), tmp_path, progress=False)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    with pytest.raises(RunExistsError, match=r"--resume " + re.escape(str(tmp_path))):
        train_copying(CopyingConfig(**TINY), tmp_path, progress=False)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume", "{tmp}/missing"], r"no copying checkpoint at .*missing; --resume takes a run folder"),
        (["--resume", "{tmp}/run", "--lr", "0.1"], r"drop --lr \(only --epochs and --no-progress"),
        (["--resume", "{tmp}/run", "--epochs", "5"], r"--epochs must be 1 when resuming a run with lr_sc"),
        (["--output", "{tmp}/run"], r"already holds a copying run; continue it with `python scripts/tra"),
        (["--output", "{tmp}/run/results.json"], r"is a file, not a folder"),
    ],
)
def test_script_refuses_bad_resumes_and_reused_folders_before_training(tmp_path, args, message, capsys):
    train_copying(CopyingConfig(**TINY), tmp_path / "run", progress=False)
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args([arg.replace("{tmp}", str(tmp_path)) for arg in args])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_script_ctrl_c_prints_the_whole_resume_command_and_resume_finishes(tmp_path, monkeypatch, capsys):
    flags = [
        "--model", "lstm", "--train-length", "2", "--test-lengths", "2", "--epochs", "2",
        "--batches-per-epoch", "2", "--batch-size", "4", "--eval-batches", "1", "--hidden-size", "8",
        "--embedding-size", "4", "--no-progress",
    ]  # fmt: skip
    with monkeypatch.context() as patch:
        ctrl_c_at_batch(patch, 3, test_batches=1)
        assert load_script().main([*flags, "--output", str(tmp_path)]) == 130
    assert f"resume with: python scripts/train_copying.py --resume {tmp_path}" in capsys.readouterr().err
    assert load_script().main(["--resume", str(tmp_path), "--no-progress"]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["finished"]


@pytest.mark.slow
def test_rim_learns_to_copy_after_a_short_gap(tmp_path):
    """The default configuration (gap 5, 1600 updates with a cosine schedule, one thread, the
    gated communication read), run through the same ``train_copying`` as the command line: the
    recall cross-entropy falls from ln 8 = 2.08 (digits unknown) to 0.29, 89 % of the digits
    (seed 0, measured 2026-11-30; with the paper's linear read it was 0.056 and 98 %, see
    docs/bounded_states.md). Gap 20 is printed, not asserted: whether a run also copies at 4x
    the training gap depends on the seed (docs/copying.md)."""
    config = CopyingConfig(test_lengths=(5, 20))
    assert (config.train_length, config.unit_size, config.top_k, config.num_threads) == (5, 64, 4, 1)
    assert config.comm_read == "gated"
    results = train_copying(config, tmp_path, progress=False)
    train_gap, long_gap = results["results"]["5"], results["results"]["20"]
    print(f"gap 5: {train_gap}\ngap 20: {long_gap}\n{results['wall_time_s']:.0f} s")
    assert train_gap["ce"] < 0.4
    assert train_gap["digit_acc"] > 0.85
