"""Trainer checkpoints that are whole or absent: each `checkpoint-N` is marked complete once every
process has written its part (`CompleteCheckpoints`), `--resume` loads only marked ones, and rotation
renames a checkpoint to a hidden name before deleting it."""

import json
import os
import shutil
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from cl2cm_hf.atomic import atomic_write_text, fsync_tree

# Written into a checkpoint once every process has written its part: `last_checkpoint` (run.py)
# resumes only from checkpoints that hold it.
CHECKPOINT_COMPLETE = "checkpoint_complete.json"
DELETING_PREFIX = ".deleting-"


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """`checkpoint-N` folders of `run_dir`, oldest first."""
    found = (p for p in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit())
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _delete_checkpoint(checkpoint: Path) -> None:
    """Rename to a hidden name, then delete: a kill during the deletion never leaves a half-deleted
    ``checkpoint-N``."""
    doomed = checkpoint.with_name(f"{DELETING_PREFIX}{checkpoint.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.rename(checkpoint, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def rotate_checkpoints(run_dir: Path, save_total_limit: int | None, best_model_checkpoint: str | None) -> None:
    """Trainer's `save_total_limit` rotation (keep the newest and the best, delete the oldest), each
    deletion through `_delete_checkpoint`."""
    if not save_total_limit or save_total_limit <= 0:
        return
    found = checkpoint_folders(run_dir)
    if len(found) <= save_total_limit:
        return
    protected = {found[-1]} | ({Path(best_model_checkpoint)} if best_model_checkpoint else set())
    remaining, keep = len(found), max(save_total_limit, len(protected))
    for checkpoint in found:
        if remaining <= keep:
            break
        if checkpoint not in protected:
            _delete_checkpoint(checkpoint)
            remaining -= 1


class CompleteCheckpoints(TrainerCallback):
    """Trainer checkpoints that `--resume` can trust.

    Trainer writes ``checkpoint-N`` in place; once every process has written its part (`on_save`),
    the main process drops `training_args.bin` (a pickle of settings that are in the run's
    training_config.yaml), flushes the folder to disk and writes `CHECKPOINT_COMPLETE`. A checkpoint
    cut short by a kill has no mark: `last_checkpoint` passes it over and the next `on_train_begin`
    deletes it. `save_total_limit` rotation runs here, after the mark, deleting through a hidden
    name (Trainer's own rotation, which deletes in place, is switched off by `_CL2CMTrainer`).

    `training_states`: state Trainer does not know of (a `RelationQueue`), each with `file_name`,
    `save(path)` and `load(path)`: saved into every checkpoint before its mark, loaded back when
    training resumes from one."""

    def __init__(self, save_total_limit: int | None, training_states: list | None = None):
        self.save_total_limit = save_total_limit
        self.training_states = training_states if training_states is not None else []

    def on_train_begin(self, args, state, control, **kwargs):
        run_dir = Path(args.output_dir)
        if args.should_save and run_dir.is_dir():
            for stale in run_dir.glob(f"{DELETING_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            for checkpoint in checkpoint_folders(run_dir):
                if not (checkpoint / CHECKPOINT_COMPLETE).exists():
                    _delete_checkpoint(checkpoint)
        PartialState().wait_for_everyone()
        if state.global_step and self.training_states:  # resumed from checkpoint-<global_step>
            folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            for training_state in self.training_states:
                training_state.load(folder / training_state.file_name)

    def on_save(self, args, state, control, **kwargs):
        PartialState().wait_for_everyone()  # every process has written its part (RNG state)
        run_dir = Path(args.output_dir)
        folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if args.should_save and folder.is_dir():  # (hyperparameter-search trials save into subfolders: not marked)
            (folder / TRAINING_ARGS_NAME).unlink(missing_ok=True)
            for training_state in self.training_states:
                training_state.save(folder / training_state.file_name)
            fsync_tree(folder)
            atomic_write_text(folder / CHECKPOINT_COMPLETE, json.dumps({"global_step": state.global_step}) + "\n")
            rotate_checkpoints(run_dir, self.save_total_limit, state.best_model_checkpoint)
        PartialState().wait_for_everyone()

    def on_train_end(self, args, state, control, **kwargs):
        # Trainer's end-of-training rule for save_total_limit 1: only the best checkpoint stays.
        best = state.best_model_checkpoint
        if args.should_save and self.save_total_limit == 1 and best is not None:
            for checkpoint in checkpoint_folders(Path(args.output_dir)):
                if checkpoint != Path(best):
                    _delete_checkpoint(checkpoint)
