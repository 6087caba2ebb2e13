"""Which run owns an output folder, and with which settings.

A run writes `run.json` into its `output_dir` before anything else: a run id and every setting that
changes its results. Stage folders and Trainer checkpoints carry the same record, so `--resume`
continues only its own run: it refuses a folder written with other settings (listing the keys that
differ) or by another run, and a fresh run refuses a folder that holds another run's outputs unless
told to overwrite it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import shutil
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

from cl2cm_hf.atomic import atomic_write_text
from cl2cm_hf.data.badrows import SKIPPED_ROWS_FILE
from cl2cm_hf.errors import CL2CMError

RUN_RECORD = "run.json"
# What a run writes into its output_dir (and all that `overwrite_output_dir` removes).
RUN_OUTPUTS = ("cross_lingual", "cross_modal", "checkpoints", "test_results.md", SKIPPED_ROWS_FILE, RUN_RECORD)
# Settings that never change what a run computes: where it writes and logs, what it does after
# training, and how it resumes.
RESULT_NEUTRAL = frozenset({
    "output_dir", "resume", "overwrite_output_dir", "resume_allow_changes", "push_to_hub_id", "query",
    "logging_steps", "logging_strategy", "logging_first_step", "report_to", "run_name", "disable_tqdm",
    "save_total_limit", "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "cpu_threads", "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo",
})

# Trainer settings that change results even when left at Trainer's default (the run also records
# every Trainer setting its recipe or command line sets).
RESULT_TRAINING_FIELDS = (
    "seed", "data_seed", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
    "lr_scheduler_type", "warmup_steps", "optim", "bf16", "fp16", "eval_strategy", "eval_steps", "save_strategy",
    "save_steps", "load_best_model_at_end", "metric_for_best_model", "dataloader_drop_last",
)


class RunMismatchError(CL2CMError):
    """An output folder belongs to another run, or to this run with other settings."""


def _plain(value):
    """A JSON-comparable form of a setting (enums by value, tuples as lists, NaN as a string)."""
    if hasattr(value, "value") and not isinstance(value, (str, int, float, bool)):
        value = value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def result_settings(parsed: Iterable, explicit: Mapping) -> dict:
    """The settings that change results: every field of the project's argument classes (with its
    default), the Trainer settings the recipe, the command line or the project's defaults set, and
    Trainer's own `RESULT_TRAINING_FIELDS` (its other fields include per-process values such as
    the local rank)."""
    *own, training_args = parsed
    settings = {f.name: getattr(args, f.name) for args in own for f in dataclasses.fields(args)}
    trainer_keys = [*RESULT_TRAINING_FIELDS, *explicit]
    settings.update({key: getattr(training_args, key) for key in trainer_keys if hasattr(training_args, key) and key not in settings})
    return {key: _plain(value) for key, value in sorted(settings.items()) if key not in RESULT_NEUTRAL}


def differing(recorded: Mapping, current: Mapping) -> dict[str, tuple]:
    """`{key: (recorded value, current value)}` for every key whose value differs or is new/gone."""
    missing = object()
    keys = sorted(set(recorded) | set(current))
    return {
        key: (recorded.get(key, "<unset>"), current.get(key, "<unset>"))
        for key in keys
        if recorded.get(key, missing) != current.get(key, missing)
    }


def read_record(folder: Path) -> dict | None:
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunMismatchError(f"{path}: unreadable run record ({err}); remove it or use another output_dir") from err
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict) or "run_id" not in record:
        raise RunMismatchError(f"{path}: not a cl2cm-hf run record (expected run_id and settings)")
    return record


def write_record(folder: Path, record: Mapping) -> None:
    atomic_write_text(Path(folder) / RUN_RECORD, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def copy_record(out: Path, folder: Path) -> None:
    """Stamp `folder` (a stage folder being written) with the record of the run in `out`, if any
    (stage functions called outside a run, as the benchmark does, have none)."""
    record = read_record(out)
    if record is not None:
        write_record(folder, record)


def _existing_outputs(out: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if (out / name).exists() or (out / name).is_symlink()]


def describe_changes(diffs: Mapping[str, tuple]) -> str:
    """``key: old -> new; ...`` of `differing`'s result."""
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in diffs.items())


def claim_output_dir(out: Path, settings: Mapping, *, resume: bool, overwrite: bool, allow_changes: Iterable[str] = ()) -> dict:
    """Check that this run may write into `out` and return the run record to write there.

    Fresh run: `out` must hold no other run's outputs (or `overwrite`). Resumed run: `out` must hold
    a run record whose settings equal `settings`, except the keys in `allow_changes` (accepted
    changes are added to the record's history). Reads only: `take_output_dir` writes."""
    out = Path(out)
    existing = _existing_outputs(out)
    if not resume:
        if existing and not overwrite:
            raise RunMismatchError(
                f"{out} holds another run's outputs ({', '.join(existing)}): pass --resume true to continue that run, "
                "--overwrite_output_dir true to replace it, or choose another output_dir"
            )
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return {"run_id": uuid.uuid4().hex, "created": now, "settings": dict(settings), "accepted_changes": []}
    record = read_record(out)
    if record is None:
        what = f"it holds {', '.join(existing)} but no {RUN_RECORD} (written by an older version?)" if existing else "it holds no run"
        raise RunMismatchError(f"--resume: nothing to resume in {out}: {what}; start without --resume")
    diffs = differing(record["settings"], settings)
    refused = {k: v for k, v in diffs.items() if k not in set(allow_changes)}
    if refused:
        raise RunMismatchError(
            f"--resume: {out} was started with other settings ({describe_changes(refused)}); resume with the recorded settings, "
            "start a new run in another output_dir, or allow a harmless change with --resume_allow_changes <key>"
        )
    if diffs:
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = {**record, "settings": dict(settings)}
        record["accepted_changes"] = [*record.get("accepted_changes", []), {"at": now, "changes": {k: list(v) for k, v in diffs.items()}}]
    return record


def clear_outputs(out: Path) -> None:
    """Remove what a run wrote into `out` (only the names a run writes, never anything else)."""
    for name in _existing_outputs(Path(out)):
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_owned(folder: Path, record: Mapping, what: str) -> None:
    """`folder` (a stage folder or checkpoint) was written by the run of `record`."""
    found = read_record(folder)
    if found is None or found.get("run_id") != record["run_id"]:
        owner = "no run record" if found is None else f"run {found.get('run_id')}"
        raise RunMismatchError(
            f"--resume: {what} {folder} belongs to another run ({owner}, this run is {record['run_id']}); "
            "remove it or start a new run in another output_dir"
        )


class RecordStamp:
    """The run record written into every Trainer checkpoint (a training state of
    `trainers.CompleteCheckpoints`), so `--resume` knows the settings a checkpoint was written with
    and names what changed since (`changes_since`)."""

    file_name = RUN_RECORD

    def __init__(self, record: Mapping):
        self.record = record

    def save(self, path: Path) -> None:
        write_record(Path(path).parent, self.record)

    def load(self, path: Path) -> None:
        """Nothing to restore: `changes_since` reads the stamp before training starts."""


def changes_since(checkpoint: Path, record: Mapping) -> dict[str, tuple]:
    """`{setting: (value when `checkpoint` was written, value now)}`; empty for a checkpoint without
    a stamp (written by an older version). A stamp of another run is refused (`check_owned`)."""
    if read_record(checkpoint) is None:
        return {}
    check_owned(checkpoint, record, "checkpoint")
    return differing(read_record(checkpoint)["settings"], record["settings"])


def take_output_dir(out: Path, settings: Mapping, *, resume: bool, overwrite: bool, allow_changes: Iterable[str] = ()) -> dict:
    """`claim_output_dir` on every process, then the main process clears (`overwrite`) and writes the
    record; returns it. Every process checks before any writes, so none sees the new record as
    another run's."""
    from accelerate import PartialState

    state = PartialState()
    record = claim_output_dir(out, settings, resume=resume, overwrite=overwrite, allow_changes=allow_changes)
    state.wait_for_everyone()
    if state.is_main_process:
        if overwrite and not resume:
            clear_outputs(out)
        Path(out).mkdir(parents=True, exist_ok=True)
        write_record(out, record)
    state.wait_for_everyone()
    return read_record(out)
