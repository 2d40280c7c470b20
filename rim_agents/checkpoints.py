"""A run's model files: saved atomically, listed, pruned, checked, and found again to resume from.

A run directory keeps its checkpoints in ``checkpoints/rl_model_<steps>_steps.zip``
(:data:`CHECKPOINT_DIR`); ``best_model.zip`` and ``final_model.zip`` lie beside it. Every
model file is written through a temporary file and renamed in one step
(:func:`save_atomically`), so a process killed while saving leaves the previous file, never a
truncated one under its name; a checkpoint found cut short all the same (a copy, a full disk)
is named by :func:`checkpoint_problem`. The callbacks save and prune with these functions,
the training core lists, checks and loads with them, and a sweep worker resumes from
:func:`resume_point`. (The supervised tasks' ``checkpoint.pt`` is their own.)
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

CHECKPOINT_DIR = "checkpoints"
_CHECKPOINT_RE = re.compile(r"rl_model_(\d+)_steps\.zip")


def replace_durably(partial: Path, path: Path) -> None:
    """Flush ``partial`` to disk, then rename it to ``path`` in one step.

    A process killed before the rename leaves ``partial`` behind and ``path`` as it was;
    never a truncated file under ``path``.
    """
    with open(partial, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(partial, path)


def save_atomically(model: BaseAlgorithm, path: Path) -> None:
    """Save ``model`` to ``path`` through a temporary file ``.<name>.partial.zip`` in the same folder."""
    partial = path.with_name(f".{path.stem}.partial.zip")
    model.save(partial)
    replace_durably(partial, path)


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    replace_durably(partial, path)


def checkpoint_path(folder: str | Path, num_timesteps: int) -> Path:
    """Where the checkpoint of ``num_timesteps`` steps goes: ``folder/rl_model_<steps>_steps.zip``.

    :param folder: a run's checkpoint folder
    :param num_timesteps: steps trained on
    """
    return Path(folder) / f"rl_model_{num_timesteps}_steps.zip"


def sorted_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """The ``rl_model_<steps>_steps.zip`` files in ``folder`` with their steps, fewest steps first.

    :param folder: a run's checkpoint folder
    """
    return sorted(
        (int(m.group(1)), p) for p in Path(folder).glob("*.zip") if (m := _CHECKPOINT_RE.fullmatch(p.name))
    )


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints in ``folder``.

    :param folder: a run's checkpoint folder
    :param keep: checkpoints to keep (at least 1)
    """
    for _, old in sorted_checkpoints(folder)[:-keep]:
        old.unlink()


def set_aside_later_checkpoints(folder: Path, num_timesteps: int) -> None:
    """Move checkpoints past a resumed one into ``abandoned/``: a later resume must not pick a
    checkpoint of the trajectory that this one replaces, and none is deleted."""
    for steps, path in sorted_checkpoints(folder):
        if steps > num_timesteps:
            (folder / "abandoned").mkdir(exist_ok=True)
            os.replace(path, folder / "abandoned" / path.name)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint with the most steps in ``run_dir/checkpoints``, or None.

    :param run_dir: a run directory
    """
    found = sorted_checkpoints(Path(run_dir) / CHECKPOINT_DIR)
    return found[-1][1] if found else None


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be loaded (cut short, damaged, not a model), or None if it is whole.

    :param path: a ``.zip`` written by Stable-Baselines3's ``save``
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if "data" not in archive.namelist():
                return "it holds no model data"
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        return str(error)
    return None if damaged is None else f"{damaged} inside it fails its checksum"


def resume_point(run_dir: str | Path) -> tuple[Path | None, int]:
    """The latest checkpoint of ``run_dir`` that was completely written, and its step count.

    A worker killed while saving leaves a truncated zip; it is renamed ``*.zip.partial`` so
    that the run resumes from the checkpoint before it.

    :param run_dir: a run directory (it need not exist yet)
    :return: (checkpoint or None, its step count or 0)
    """
    while found := sorted_checkpoints(Path(run_dir) / CHECKPOINT_DIR):
        steps, checkpoint = found[-1]
        if checkpoint_problem(checkpoint) is None:
            return checkpoint, steps
        checkpoint.replace(checkpoint.with_name(f"{checkpoint.name}.partial"))
    return None, 0


def _check_whole(checkpoint: Path) -> None:
    """A ValueError naming a checkpoint that is cut short or damaged, and the one to use instead."""
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        earlier = [p for _, p in sorted_checkpoints(checkpoint.parent) if p != checkpoint]
        hint = f"resume from {earlier[-1]}" if earlier else "start the run afresh"
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} cannot be read ({problem}); it was probably cut short: "
            f"move it away and {hint}"
        )


def load_checkpoint(
    checkpoint: Path,
    algorithm: type[OnPolicyAlgorithm],
    expected_policy: type,
    env: VecEnv,
    device: str,
    env_id: str,
    policy: str,
) -> OnPolicyAlgorithm:
    """Load a checkpoint to continue training, refusing one that is cut short or does not fit the run.

    :param checkpoint: the ``.zip`` to load
    :param algorithm: the algorithm class that saved it
    :param expected_policy: the policy class the run's configuration asks for
    :param env: the training environment it continues on
    :param device: torch device
    :param env_id: the run's environment id, for messages
    :param policy: the run's policy option (``"rim"``, ``"lstm"``, ``"ppo"``), for messages
    """
    _check_whole(checkpoint)
    try:
        model = algorithm.load(checkpoint, env=env, device=device)
    except ValueError as error:  # SB3 reports observation/action space mismatches as ValueError
        raise ValueError(f"checkpoint {str(checkpoint)!r} does not fit {env_id}: {error}") from error
    stored = type(model.policy)
    if stored is not expected_policy:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} holds a {stored.__name__}, but the run's config asks for "
            f"{expected_policy.__name__} (policy={policy!r})"
        )
    return model
