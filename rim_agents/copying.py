"""The copying task (Goyal et al., ICLR 2021, arXiv 1909.10893, Table 1): model, metrics, trainer.

The task, stated exactly: ten digits drawn uniformly from 1..8, then ``gap`` blanks (0), then the
delimiter 9, then 9 more blanks while the model must output the ten digits; total length
``gap + 20``. Inputs are embedded; the model is ``rim_agents.nn.RIM`` (or ``torch.nn.LSTM`` as the
baseline) followed by a linear readout. It is trained on one gap (``train_length``, 50 in the
paper) and tested on longer ones (200 in the paper): a model that really holds the digits copies
after any gap, one that learned "about ``train_length`` steps" does not.

Metrics, per test gap (the data is in ``envs/copying.py``):

- ``ce``: cross-entropy over the ten recall positions only, in nats per digit. Our headline number.
- ``ce_all_positions``: cross-entropy averaged over all ``gap + 20`` positions (blank targets
  included). This is what the official code (anirudh9119/RIMs, ``train_copying.py``) reports; the
  blank positions are easy, so it shrinks the recall error by about ``10 / (gap + 20)``.
- ``digit_acc``: fraction of recalled digits that are right.
- ``seq_acc``: fraction of sequences with all ten digits right.

Training minimises ``ce_all_positions`` like the official code: the model must also output blank
during the gap. The checkpoint and TensorBoard events go to the output folder, and
``results.json`` holds the last evaluation.

Symbols:
    L - sequence length (gap + 20)
    N - batch size
    C - target classes (9: blank and the digits 1..8)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from envs.copying import NUM_CLASSES, NUM_DIGITS, VOCAB_SIZE, copying_batch, recall_slice
from rim_agents import run_state
from rim_agents.nn import RIM
from rim_agents.nn.attention import COMM_READS
from rim_agents.run_state import (
    CHECKPOINT,
    TrainingInterrupted,
    interrupt_flag,
    log_unit_activity,
    open_writer,
    save_atomically,
    write_results,
)
from rim_agents.run_state import RunExistsError as RunExistsError  # raised by check_new_run_folder
from rim_agents.supervised_config import CELLS as CELLS
from rim_agents.supervised_config import MODELS as MODELS
from rim_agents.supervised_config import ConfigError as ConfigError
from rim_agents.supervised_config import (
    build_core,
    check_choices,
    check_epochs_started,
    check_positive_int_list,
    check_positive_ints,
    check_resumable,
    check_shared_fields,
)
from rim_agents.threads import torch_threads

LR_SCHEDULES = ("constant", "cosine")

METRIC_DEFINITIONS = {
    "ce": "cross-entropy (nats) over the ten recall positions only (ours, the headline)",
    "ce_all_positions": "cross-entropy (nats) over all gap + 20 positions (the official code's number)",
    "digit_acc": "fraction of recalled digits that are right",
    "seq_acc": "fraction of sequences with all ten digits right",
}


@dataclass
class CopyingConfig:
    """
    Everything that defines one copying-task run. The defaults are the small CPU configuration
    described in docs/copying.md; ``paper_config`` gives the paper's.

    :param model: "rim" or "lstm"
    :param train_length: gap (blanks between the digits and the delimiter) of the training data
    :param test_lengths: gaps to evaluate on after each epoch
    :param epochs: number of epochs; each ends with an evaluation and a checkpoint
    :param batches_per_epoch: training batches per epoch (fresh data every batch)
    :param batch_size: sequences per training and evaluation batch
    :param eval_batches: batches per test gap; the test sets are fixed by ``seed`` and the gap
    :param lr: Adam learning rate (the peak, with ``lr_schedule="cosine"``)
    :param lr_schedule: "constant", or "cosine": from ``lr`` down to 0 at the last update
    :param clip: maximum gradient norm
    :param seed: seeds the weights, the training data and the test sets
    :param embedding_size: size of the token embedding fed to the recurrent core
    :param num_units: RIM units K
    :param unit_size: RIM unit size H (hidden size K*H)
    :param top_k: RIM units active per step
    :param cell: RIM unit dynamics, "lstm" or "gru"
    :param input_dropout: RIM dropout on the input-attention weights (paper: 0.1)
    :param comm_dropout: RIM dropout on the communication-attention weights (paper: 0.1)
    :param comm_read: how RIM units add their communication read, "gated" (the official
        implementation's, bounded) or "linear" (the paper's equation); see ``rim_agents.nn.RIM``
    :param hidden_size: hidden size of the LSTM baseline
    :param device: torch device string ("cpu", "cuda", "cuda:1", ...)
    :param num_threads: CPU threads torch uses during the run (restored afterwards); one is the
        fastest for the RIM's many small per-step operations on a CPU (docs/benchmarks.md), and
        the thread count changes the summation order, so results depend on it
    """

    model: str = "rim"
    train_length: int = 5
    test_lengths: tuple[int, ...] = (5, 20, 50)
    epochs: int = 8
    batches_per_epoch: int = 200
    batch_size: int = 64
    eval_batches: int = 4
    lr: float = 3e-3
    lr_schedule: str = "cosine"
    clip: float = 1.0
    seed: int = 0
    embedding_size: int = 32
    num_units: int = 6
    unit_size: int = 64
    top_k: int = 4
    cell: str = "lstm"
    input_dropout: float = 0.0
    comm_dropout: float = 0.0
    comm_read: str = "gated"
    hidden_size: int = 384
    device: str = "cpu"
    num_threads: int = 1

    def __post_init__(self) -> None:
        self.test_lengths = tuple(self.test_lengths)
        check_choices(
            self,
            {"model": MODELS, "cell": CELLS, "comm_read": COMM_READS, "lr_schedule": LR_SCHEDULES},
        )
        check_positive_ints(
            self,
            (
                "train_length",
                "epochs",
                "batches_per_epoch",
                "batch_size",
                "eval_batches",
                "embedding_size",
                "num_units",
                "unit_size",
                "hidden_size",
                "num_threads",
            ),
        )
        check_positive_int_list("test_lengths", self.test_lengths)
        check_shared_fields(self)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-friendly values (``test_lengths`` as a list)."""
        config = asdict(self)
        config["test_lengths"] = list(self.test_lengths)
        return config


def paper_config(model: str = "rim") -> CopyingConfig:
    """
    The paper's setting (Table 1, appendix D.1): gap 50 for training and 200 for testing, RIMs with
    6 units of 100 and k=4, the LSTM baseline with 600 units, batch 64, Adam 1e-3. The number of
    updates is not stated in the paper; the official script runs 200 batches per epoch for 200
    epochs at a constant learning rate and embeds tokens in as many dimensions as the hidden size
    (600), and so does this, with the paper's attention dropouts (0.1). The communication read
    is the RIM's default, the official implementation's gated one (``comm_read="linear"`` gives
    the paper's equation).

    :param model: "rim" or "lstm"
    :return: the configuration
    """
    return CopyingConfig(
        model=model,
        train_length=50,
        test_lengths=(50, 100, 200),
        epochs=200,
        batches_per_epoch=200,
        batch_size=64,
        eval_batches=16,
        lr=1e-3,
        lr_schedule="constant",
        embedding_size=600,
        num_units=6,
        unit_size=100,
        top_k=4,
        input_dropout=0.1,
        comm_dropout=0.1,
        hidden_size=600,
    )


class CopyingModel(nn.Module):
    """
    Embedding -> recurrent core (``RIM`` or ``nn.LSTM``) -> linear readout over the 9 target classes.

    :param core: the recurrent core, time-major (``(L, N, embedding_size)`` in, ``(output,
        state)`` out); ``RIM`` and ``nn.LSTM`` share that calling convention
    :param embedding_size: size of the token embedding; must equal ``core.input_size``
    """

    def __init__(self, core: RIM | nn.LSTM, embedding_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, embedding_size)
        self.core = core
        self.readout = nn.Linear(core.hidden_size, NUM_CLASSES)

    def forward(self, tokens: th.Tensor) -> th.Tensor:
        """
        :param tokens: (L, N) int64 input tokens in 0..9
        :return: (L, N, C) logits
        """
        output, _ = self.core(self.embedding(tokens))
        return self.readout(output)


def build_model(config: CopyingConfig) -> CopyingModel:
    """
    The model that ``config`` describes, on ``config.device``, with weights seeded by ``config.seed``.

    :param config: the run configuration
    :return: the model
    """
    th.manual_seed(config.seed)
    core = build_core(config)
    return CopyingModel(core, config.embedding_size).to(config.device)


def build_scheduler(
    optimizer: th.optim.Optimizer, config: CopyingConfig
) -> th.optim.lr_scheduler.LRScheduler | None:
    """
    The learning-rate schedule of ``config``, stepped once per update.

    :param optimizer: the optimizer whose learning rate it sets
    :param config: the run configuration (``lr_schedule``, ``epochs``, ``batches_per_epoch``)
    :return: ``None`` for a constant rate; for "cosine", a schedule that multiplies ``lr`` by
        ``(1 + cos(pi * u / U)) / 2`` at update ``u`` of ``U``, so the last update uses a rate near 0
    """
    if config.lr_schedule == "constant":
        return None
    updates = config.epochs * config.batches_per_epoch
    return th.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: 0.5 * (1.0 + math.cos(math.pi * min(update, updates) / updates))
    )


def fixed_test_batches(config: CopyingConfig, gap: int) -> list[tuple[th.Tensor, th.Tensor]]:
    """
    The fixed test batches for one gap: a function of ``(config.seed, gap)`` only, so runs with
    different ``test_lengths`` or models see the same sequences for the same gap.

    :param config: the run configuration (seed, batch size, number of batches, device)
    :param gap: the test gap
    :return: ``config.eval_batches`` pairs of (L, N) inputs and targets
    """
    seed = int(np.random.SeedSequence([config.seed, gap]).generate_state(1)[0])
    generator = th.Generator().manual_seed(seed)
    return [
        copying_batch(config.batch_size, gap, generator, config.device) for _ in range(config.eval_batches)
    ]


@th.no_grad()
def evaluate(
    model: CopyingModel, batches: list[tuple[th.Tensor, th.Tensor]], gap: int
) -> tuple[dict[str, float], th.Tensor | None]:
    """
    Metrics of ``model`` on ``batches`` (see the module docstring), in eval mode (no dropout).

    :param model: the model; left in eval mode, the caller switches back to train mode
    :param batches: (L, N) inputs and targets with ``L = gap + 20``
    :param gap: their gap
    :return: the metrics, and for a RIM core the fraction of steps each unit was active,
        shape (num_layers, K) (``None`` for an LSTM)
    """
    model.eval()
    recall = recall_slice(gap)
    ce_recall = ce_all = 0.0
    right_digits = right_sequences = sequences = positions = 0
    unit_activity = None
    for inputs, targets in batches:
        logits = model(inputs)  # (L, N, C)
        ce_all += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        positions += targets.numel()
        recall_logits, recall_targets = logits[recall], targets[recall]  # (10, N, C), (10, N)
        ce_recall += F.cross_entropy(
            recall_logits.flatten(0, 1), recall_targets.flatten(), reduction="sum"
        ).item()
        right = recall_logits.argmax(dim=-1) == recall_targets  # (10, N)
        right_digits += int(right.sum())
        right_sequences += int(right.all(dim=0).sum())
        sequences += targets.shape[1]
        active = model.core.last_active if isinstance(model.core, RIM) else None
        if active is not None:
            # (L, num_layers, N, K) -> (num_layers, K), summed over batches
            activity = active.float().mean(dim=(0, 2)).cpu()
            unit_activity = activity if unit_activity is None else unit_activity + activity
    metrics = {
        "ce": ce_recall / (sequences * NUM_DIGITS),
        "ce_all_positions": ce_all / positions,
        "digit_acc": right_digits / (sequences * NUM_DIGITS),
        "seq_acc": right_sequences / sequences,
    }
    if unit_activity is not None:
        unit_activity = unit_activity / len(batches)
    return metrics, unit_activity


def train_epoch(
    model: CopyingModel,
    optimizer: th.optim.Optimizer,
    config: CopyingConfig,
    generator: th.Generator,
    on_step: Any = None,
    scheduler: th.optim.lr_scheduler.LRScheduler | None = None,
    batches: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[float]:
    """
    Up to one epoch of Adam steps on fresh batches with gap ``config.train_length``, in train mode
    (dropout on), with gradient-norm clipping.

    :param model: the model; switched to train mode here, whatever evaluation left it in
    :param optimizer: its optimizer
    :param config: the run configuration
    :param generator: source of the training data
    :param on_step: called as ``on_step(loss_all_positions, loss_recall)`` after each step
    :param scheduler: learning-rate schedule stepped after every update (``None``: constant)
    :param batches: how many updates to make (default ``config.batches_per_epoch``; fewer when a
        resumed run finishes an epoch it had started)
    :param should_stop: checked after every update; ``True`` ends the epoch early, between two
        updates, so that the state can be saved and resumed exactly
    :return: the training loss (cross-entropy over all positions) of each step made
    """
    model.train()
    recall = recall_slice(config.train_length)
    losses: list[float] = []
    for _ in range(config.batches_per_epoch if batches is None else batches):
        inputs, targets = copying_batch(config.batch_size, config.train_length, generator, config.device)
        logits = model(inputs)  # (L, N, C)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
        if on_step is not None:
            with th.no_grad():
                loss_recall = F.cross_entropy(logits[recall].flatten(0, 1), targets[recall].flatten())
            on_step(losses[-1], loss_recall.item())
        if should_stop is not None and should_stop():
            break
    return losses


def results_table(results: dict[str, Any]) -> str:
    """
    A markdown table of a ``results.json`` dictionary, one row per test gap.

    :param results: what ``train_copying`` returns
    :return: the table, with a header line naming the model and training gap
    """
    train_length = results["train_length"]
    lines = [
        f"copying task, model {results['model']}, trained on gap {train_length}",
        "",
        "| gap | length | CE recall (ours) | CE all positions (official) | digit acc | seq acc |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for gap, metrics in results["results"].items():
        marker = " (train)" if int(gap) == train_length else ""
        lines.append(
            f"| {gap}{marker} | {int(gap) + 2 * NUM_DIGITS} | {metrics['ce']:.3f} | "
            f"{metrics['ce_all_positions']:.3f} | {metrics['digit_acc']:.3f} | {metrics['seq_acc']:.3f} |"
        )
    return "\n".join(lines)


TASK, SCRIPT = "copying", "scripts/train_copying.py"


def check_new_run_folder(output_dir: str | Path) -> None:
    """
    Refuse to start a copying run in a folder that already holds a run (``run_state.check_new_run_folder``).

    :param output_dir: the folder the run would write to
    :raises RunExistsError: when ``checkpoint.pt`` or ``results.json`` is there
    :raises NotADirectoryError: when the path is a file
    """
    run_state.check_new_run_folder(output_dir, TASK, SCRIPT)


def load_checkpoint(output_dir: str | Path) -> dict[str, Any]:
    """
    The saved state of a run, to continue it with ``train_copying(..., resume=True)``.

    :param output_dir: the run folder (or its ``checkpoint.pt``)
    :return: the checkpoint dictionary (see ``train_copying``)
    :raises FileNotFoundError: when there is no checkpoint, with what to pass instead
    """
    return run_state.load_checkpoint(output_dir, TASK, SCRIPT)


def resumed_config(checkpoint: dict[str, Any], epochs: int | None = None) -> CopyingConfig:
    """
    The configuration of a saved run, optionally with more (or fewer) epochs.

    :param checkpoint: what ``load_checkpoint`` returned
    :param epochs: a new total number of epochs; only for a constant learning rate, since a
        cosine schedule is laid over the original number of updates
    :return: the configuration to continue with
    """
    config = CopyingConfig(**checkpoint["config"])
    if epochs is None or epochs == config.epochs:
        return config
    if config.lr_schedule != "constant":
        raise ConfigError(
            "epochs",
            epochs,
            f"{config.epochs} when resuming a run with lr_schedule={config.lr_schedule} "
            "(its schedule spans the original number of updates)",
        )
    check_epochs_started(checkpoint, epochs)
    return CopyingConfig(**{**checkpoint["config"], "epochs": epochs})


def train_copying(
    config: CopyingConfig, output_dir: str | Path, progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """
    Train on gap ``config.train_length``, evaluate on every ``config.test_lengths`` gap after each
    epoch, and write to ``output_dir``: TensorBoard events, ``checkpoint.pt`` and ``results.json``
    (both rewritten after every epoch; ``results.json`` has ``"finished": true`` at the end).

    ``checkpoint.pt`` holds everything that the rest of the run depends on: the model, optimizer
    and schedule states, the training-data generator's and torch's global RNG states (dropout),
    the config, the position (``epoch`` finished epochs and ``batch`` updates into the next), and
    the evaluation history. A run continued from it with ``resume=True`` makes the same updates,
    bit for bit, as one that never stopped (on the same machine, thread count and build).

    Ctrl-C stops the run after the update in progress, saves the checkpoint and raises
    ``TrainingInterrupted``.

    :param config: the run configuration; when resuming, the saved one (``resumed_config``)
    :param output_dir: the folder for everything this run writes (created if missing); a new run
        refuses a folder that already holds one (``RunExistsError``)
    :param progress: show a progress bar on stderr
    :param resume: continue the run saved in ``output_dir``
    :return: the content of ``results.json``: ``{"model", "train_length", "config", "results":
        {"<gap>": {"ce", "ce_all_positions", "digit_acc", "seq_acc"}}, "history": [{"epoch",
        "update", "wall_time_s", "train_ce_all_positions", "results"}, ...], "metric_definitions",
        "epochs", "finished", "parameters", "wall_time_s"}``
    """
    output_dir = Path(output_dir)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(output_dir)
        check_resumable(config, CopyingConfig(**checkpoint["config"]))
    else:
        check_new_run_folder(output_dir)
    with torch_threads(config.num_threads), interrupt_flag() as interrupted:
        return _train_copying(config, output_dir, progress, checkpoint, interrupted)


def _train_copying(
    config: CopyingConfig,
    output_dir: Path,
    progress: bool,
    checkpoint: dict[str, Any] | None,
    interrupted: Callable[[], bool],
) -> dict[str, Any]:
    """``train_copying`` with the thread count and the Ctrl-C flag set."""
    start = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(config)
    optimizer = th.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = build_scheduler(optimizer, config)
    generator = th.Generator().manual_seed(config.seed)
    epoch, batch, history, wall_before = 0, 0, [], 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        generator.set_state(checkpoint["generator"])
        th.set_rng_state(checkpoint["torch_rng"])
        epoch, batch = checkpoint["epoch"], checkpoint["batch"]
        history, wall_before = checkpoint["history"], checkpoint["wall_time_s"]
    step = epoch * config.batches_per_epoch + batch
    test_sets = {gap: fixed_test_batches(config, gap) for gap in config.test_lengths}
    num_params = sum(parameter.numel() for parameter in model.parameters())
    writer = open_writer(output_dir, config.to_dict(), num_params, step, resumed=checkpoint is not None)

    def save() -> None:
        save_atomically(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": th.get_rng_state(),
                "config": config.to_dict(),
                "epoch": epoch,
                "batch": batch,
                "history": history,
                "wall_time_s": wall_before + time.perf_counter() - start,
            },
            output_dir / CHECKPOINT,
        )

    def results(finished: bool) -> dict[str, Any]:
        return {
            "model": config.model,
            "train_length": config.train_length,
            "config": config.to_dict(),
            "results": history[-1]["results"] if history else {},
            "history": history,
            "metric_definitions": METRIC_DEFINITIONS,
            "epochs": config.epochs,
            "finished": finished,
            "parameters": num_params,
            "wall_time_s": round(wall_before + time.perf_counter() - start, 1),
        }

    bar = tqdm(
        total=config.epochs * config.batches_per_epoch,
        initial=step,
        desc=f"copying {config.model} gap {config.train_length}",
        disable=not progress,
    )
    epoch_losses: list[float] = []

    def on_step(loss_all: float, loss_recall: float) -> None:
        nonlocal step, batch
        step += 1
        batch += 1
        epoch_losses.append(loss_all)
        writer.add_scalar("losses/train_ce_all_positions", loss_all, step)
        writer.add_scalar("losses/train_ce_recall", loss_recall, step)
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_all:.4f}", recall=f"{loss_recall:.3f}")

    try:
        while epoch < config.epochs:
            epoch_start, epoch_losses = time.perf_counter(), []
            train_epoch(
                model,
                optimizer,
                config,
                generator,
                on_step,
                scheduler,
                batches=config.batches_per_epoch - batch,
                should_stop=interrupted,
            )
            if batch < config.batches_per_epoch:
                save()
                raise TrainingInterrupted(output_dir, step)
            writer.add_scalar(
                "charts/steps_per_second", len(epoch_losses) / (time.perf_counter() - epoch_start), step
            )
            epoch, batch = epoch + 1, 0
            metrics_by_gap: dict[str, dict[str, float]] = {}
            for gap, batches in test_sets.items():
                metrics, unit_activity = evaluate(model, batches, gap)
                metrics_by_gap[str(gap)] = metrics
                for name, value in metrics.items():
                    writer.add_scalar(f"eval_gap_{gap}/{name}", value, step)
                if unit_activity is not None:
                    log_unit_activity(writer, f"units_gap_{gap}", unit_activity, step)
            history.append(
                {
                    "epoch": epoch,
                    "update": step,
                    "wall_time_s": round(wall_before + time.perf_counter() - start, 1),
                    "train_ce_all_positions": float(np.mean(epoch_losses)) if epoch_losses else None,
                    "results": metrics_by_gap,
                }
            )
            save()
            write_results(output_dir, results(finished=epoch == config.epochs))
            summary = "  ".join(
                f"gap {gap}: ce {metrics['ce']:.3f} seq {metrics['seq_acc']:.2f}"
                for gap, metrics in metrics_by_gap.items()
            )
            bar.write(f"epoch {epoch}/{config.epochs}  {summary}")
            if interrupted():
                raise TrainingInterrupted(output_dir, step)
    finally:
        bar.close()
        writer.close()
    final = results(finished=True)
    write_results(output_dir, final)
    return final
