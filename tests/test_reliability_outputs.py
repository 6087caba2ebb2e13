"""Outputs that never half-exist, and safe loading.

- Folders written with `atomic_directory` survive a SIGKILL at any moment: the previous complete
  version (or the new complete one) loads, never a mix.
- Trainer checkpoints are marked complete once written (`CompleteCheckpoints`,
  cl2cm_hf/training/checkpoints.py): a save cut short leaves no marked `checkpoint-N` (`--resume` passes
  it over, the next training start deletes it), rotation and best-model tracking still work.
- A truncated `model.safetensors` fails naming the file; an out-of-range `config.json` fails in the
  config class, before any module or tensor is built.
- Checkpoints ship code importing only torch, transformers and the standard library, hold model
  weights only as safetensors, and the project never unpickles (`torch.load` only with
  `weights_only=True`).
"""

import ast
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import build_wordpiece_tokenizer, cross_lingual_config, features_config
from datasets import Dataset
from transformers import AutoConfig, AutoModel, TrainingArguments

from cl2cm_hf import CL2CMCrossLingualModel, CL2CMCrossModalModel
from cl2cm_hf.atomic import atomic_directory, recover_directory
from cl2cm_hf.data import PairCollator
from cl2cm_hf.evaluation.records import MetricRecord
from cl2cm_hf.modeling_cl2cm import CorruptCheckpointError, check_safetensors_file
from cl2cm_hf.training.checkpoints import CHECKPOINT_COMPLETE
from cl2cm_hf.training.method_arguments import CL2CMArguments
from cl2cm_hf.training.run import last_checkpoint
from cl2cm_hf.training.trainers import CrossLingualTrainer

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
WORDS = "a man woman dog cat plays guitar on the street with red blue ball runs in park".split()
# Files Trainer itself writes into a checkpoint to resume (optimizer, scheduler, RNG, AMP scaler):
# tensors and plain containers, which Trainer reads back with torch.load(weights_only=True).
TRAINER_STATE_FILES = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state(_\d+)?\.pth)$")
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack")


# --- an in-process Trainer on a tiny model (shared with test_reliability_numerics) -------------
class ScriptedEvaluator:
    """Returns the given validation SumR values in turn (to steer best-model selection)."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, model):
        value = float(self.values.pop(0)) if self.values else 0.0
        return [MetricRecord("scripted", "validation", "de", None, "sumr", value)]  # logged as eval_de_sumr, eval_sumr


def pair_rows(n: int = 32):
    return [
        {
            "visual_id": f"v{i}",
            "source_text": " ".join(WORDS[i % 7 : i % 7 + 4]),
            "target_text": " ".join(WORDS[(i * 3) % 9 : (i * 3) % 9 + 3]),
            "target_lang": "de",
        }
        for i in range(n)
    ]


def tiny_trainer(output_dir, max_steps: int = 4, evaluator=None, cl2cm=None, seed: int = 0, **training):
    """A CrossLingualTrainer on a tiny BERT, 32 pairs, batch 4, saving every step."""
    torch.manual_seed(seed)
    tokenizer = build_wordpiece_tokenizer()
    settings = dict(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-3,
        save_strategy="steps", save_steps=1, save_total_limit=None, report_to="none", use_cpu=True,
        remove_unused_columns=False, label_names=[], logging_steps=1, disable_tqdm=True, seed=seed,
        dataloader_num_workers=0,
    )
    if evaluator is not None:
        settings.update(eval_strategy="steps", eval_steps=1, load_best_model_at_end=True, metric_for_best_model="sumr",
                        greater_is_better=True)
    settings.update(training)
    rows = Dataset.from_list(pair_rows())
    return CrossLingualTrainer(
        model=CL2CMCrossLingualModel(cross_lingual_config()),
        args=TrainingArguments(**settings),
        train_dataset=rows,
        eval_dataset=rows.select(range(4)) if evaluator is not None else None,
        data_collator=PairCollator(tokenizer, None, 16),
        processing_class=tokenizer,
        cl2cm_args=cl2cm or CL2CMArguments(ot_iterations=5),
        evaluator=evaluator,
    )


def checkpoints(folder) -> list[str]:
    return sorted((p.name for p in Path(folder).glob("checkpoint-*")), key=lambda n: int(n.split("-")[1]))


@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory):
    """Six steps, a checkpoint and a validation each step, at most 2 checkpoints kept, best = step 2."""
    out = tmp_path_factory.mktemp("atomic_checkpoints")
    trainer = tiny_trainer(out, max_steps=6, evaluator=ScriptedEvaluator([1, 5, 2, 3, 4, 0]), save_total_limit=2)
    trainer.train()
    return out, trainer


# --- folders written atomically survive SIGKILL ------------------------------------------------
SAVER = textwrap.dedent(
    """
    import sys, torch
    from transformers import BertConfig, BertModel
    from cl2cm_hf.atomic import atomic_directory
    folder, start = sys.argv[1], int(sys.argv[2])
    if sys.argv[3] == "two-renames":  # the portable path (no atomic exchange of two folders)
        import cl2cm_hf.atomic
        cl2cm_hf.atomic._renameat2 = None
    model = BertModel(BertConfig(vocab_size=2000, hidden_size=128, num_hidden_layers=4, num_attention_heads=2,
                                 intermediate_size=512))
    version = start
    while True:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(version))
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            (tmp / "version.txt").write_text(str(version))
        print(version, flush=True)
        version += 1
    """
)


def test_sigkill_during_repeated_saves_always_leaves_a_loadable_folder(tmp_path):
    """A child saves a model folder again and again; SIGKILL at seeded random moments, then the
    folder loads and every tensor holds the value of one single version."""
    from transformers import BertModel

    folder, rng = tmp_path / "model", random.Random(20240607)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for trial, swap in enumerate(["exchange", "two-renames"]):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(folder), str(trial * 1000), swap], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
        first = proc.stdout.readline()  # one complete save
        assert first.strip() == str(trial * 1000), "the saver died before its first save"
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = [int(line) for line in [first, *proc.stdout.read().split()] if str(line).strip()]
        recover_directory(folder)  # what loaders call (a no-op where the swap is one atomic exchange)
        version = int((folder / "version.txt").read_text())
        assert version in (saved[-1], saved[-1] + 1)  # the last reported save, or one finished unreported
        assert check_safetensors_file(str(folder / "model.safetensors")) is None
        model = BertModel.from_pretrained(folder)
        values = {float(v) for p in model.parameters() for v in p.detach().flatten()[:3]}
        assert values == {float(version)}, f"trial {trial}: mixed versions {values}"
        # Only hidden temporaries may be left beside it (the next save removes them).
        assert [p.name for p in folder.parent.iterdir() if not p.name.startswith(".")] == ["model"]


def test_exception_inside_atomic_directory_keeps_previous_version(tmp_path):
    folder = tmp_path / "out"
    with atomic_directory(folder) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError), atomic_directory(folder) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("killed mid-write")
    assert (folder / "a.txt").read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["out"]


# --- Trainer checkpoints -----------------------------------------------------------------------
def test_trainer_checkpoints_marked_complete_keep_rotation_and_best(trained_checkpoints):
    out, trainer = trained_checkpoints
    assert checkpoints(out) == ["checkpoint-2", "checkpoint-6"]  # best (sumr 5) + the latest
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no folder left mid-deletion
    assert trainer.state.best_model_checkpoint == str(out / "checkpoint-2")
    assert trainer.args.save_total_limit is None  # rotation is CompleteCheckpoints' job, after the mark
    for name in checkpoints(out):
        state = json.loads((out / name / "trainer_state.json").read_text())
        assert state["best_model_checkpoint"] == str(out / "checkpoint-2")
        assert state["global_step"] == int(name.split("-")[1])
        assert json.loads((out / name / CHECKPOINT_COMPLETE).read_text()) == {"global_step": state["global_step"]}
    assert last_checkpoint(str(out)) == str(out / "checkpoint-6")


def test_trainer_save_cut_short_leaves_no_checkpoint_and_resume_works(tmp_path, monkeypatch):
    trainer = tiny_trainer(tmp_path, max_steps=4)
    original, calls = trainer._save_rng_state, []

    def dies_on_third_save(output_dir):
        calls.append(output_dir)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed while saving checkpoint-3")
        return original(output_dir)

    monkeypatch.setattr(trainer, "_save_rng_state", dies_on_third_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert calls[-1] == str(tmp_path / "checkpoint-3")  # Trainer was writing checkpoint-3 in place ...
    assert not (tmp_path / "checkpoint-3" / CHECKPOINT_COMPLETE).exists()  # ... never marked complete
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")

    resumed = tiny_trainer(tmp_path, max_steps=4)
    resumed.train(resume_from_checkpoint=last_checkpoint(str(tmp_path)))
    assert checkpoints(tmp_path) == ["checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4"]
    assert all((tmp_path / name / CHECKPOINT_COMPLETE).exists() for name in checkpoints(tmp_path))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-4")


def test_unmarked_checkpoint_is_deleted_when_training_starts(tmp_path):
    half = tmp_path / "checkpoint-9"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"cut short")
    assert last_checkpoint(str(tmp_path)) is None
    tiny_trainer(tmp_path, max_steps=1).train()
    assert checkpoints(tmp_path) == ["checkpoint-1"]


def test_rotation_deletes_through_a_hidden_name(tmp_path, monkeypatch):
    """A kill in the middle of deleting an old checkpoint leaves a hidden folder, never a
    half-deleted ``checkpoint-N``."""
    import shutil

    from cl2cm_hf.training import checkpoints as checkpoint_module

    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / CHECKPOINT_COMPLETE).write_text("{}")
    real_rmtree, seen = shutil.rmtree, []

    def killed_in_rmtree(path, ignore_errors=False):
        seen.append(Path(path).name)
        if Path(path).exists():
            raise KeyboardInterrupt("killed while deleting")
        return real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpoint_module.shutil, "rmtree", killed_in_rmtree)
    with pytest.raises(KeyboardInterrupt):
        checkpoint_module.rotate_checkpoints(tmp_path, 2, None)
    assert checkpoints(tmp_path) == ["checkpoint-2", "checkpoint-3"] and seen[-1] == ".deleting-checkpoint-1"


def test_last_checkpoint_passes_over_damaged_weights(trained_checkpoints, tmp_path):
    out, _ = trained_checkpoints
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = copy / "checkpoint-6" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert last_checkpoint(str(copy)) == str(copy / "checkpoint-2")


# --- safe loading ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "cross_modal"
    torch.manual_seed(0)
    CL2CMCrossModalModel(features_config()).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("damage", ["truncated", "one byte short", "header only", "empty", "random bytes"])
def test_corrupt_model_safetensors_error_names_the_file(saved_model, tmp_path, damage):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(saved_model, folder)
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    blob = {"truncated": raw[: len(raw) // 2], "one byte short": raw[:-1], "header only": raw[:40], "empty": b"",
            "random bytes": os.urandom(len(raw))}[damage]
    weights.write_bytes(blob)
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupted") as error:
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert str(weights) in str(error.value)


def test_corrupt_weights_named_by_the_checkpoints_own_code(saved_model, tmp_path):
    """The shipped code (what trainer/query.py, the teacher loading and any user run) names the file too."""
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(saved_model, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code = f"import sys; sys.modules['cl2cm_hf'] = None\nfrom transformers import AutoModel\nAutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "CorruptCheckpointError" in last and str(weights) in last, result.stderr[-2000:]


BAD_CONFIG_EDITS = [
    ("projection_dim", -16, "projection_dim=-16"),
    ("visual_feature_dim", 0, "visual_feature_dim=0"),
    ("visual_encoder_type", "lidar", "visual_encoder_type='lidar'"),
    ("text_config.vocab_size", -5, "text_config.vocab_size=-5"),
    ("text_config.num_attention_heads", 0, "num_attention_heads=0"),
    ("text_config.num_hidden_layers", -1, "num_hidden_layers=-1"),
    ("text_config.hidden_dropout_prob", 3.0, "hidden_dropout_prob=3.0"),
    ("text_config.hidden_size", 31, "not divisible by num_attention_heads"),
    ("text_config", 7, "text_config=7"),
]


@pytest.mark.parametrize("key, value, message", BAD_CONFIG_EDITS)
def test_out_of_range_config_fails_in_the_config_before_any_tensor(saved_model, tmp_path, monkeypatch, key, value, message):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(saved_model, folder)
    config = json.loads((folder / "config.json").read_text())
    target, *path = key.split(".")[::-1]
    holder = config
    for part in reversed(path):
        holder = holder[part]
    holder[target] = value
    (folder / "config.json").write_text(json.dumps(config))

    built = []
    module_init, empty = torch.nn.Module.__init__, torch.empty
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda self, *a, **k: (built.append(type(self)), module_init(self, *a, **k))[1])
    monkeypatch.setattr(torch, "empty", lambda *a, **k: (built.append("torch.empty"), empty(*a, **k))[1])
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert built == [], f"modules or tensors were built before the error: {built[:5]}"
    frames = [str(frame.path) for frame in error.traceback]
    assert any(f.endswith("configuration_cl2cm.py") for f in frames)  # raised by the config class
    monkeypatch.undo()
    with pytest.raises(ValueError, match=re.escape(message)):
        AutoConfig.from_pretrained(folder, trust_remote_code=True)


ALLOWED_TOP = {"torch", "transformers"} | set(sys.stdlib_module_names)


def shipped_imports(folder: Path) -> list[str]:
    """Modules imported by the .py files of a saved folder that are neither allowed nor the folder's own files."""
    own = {p.stem for p in folder.glob("*.py")}
    bad = []
    for source in folder.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: must be a file of the folder
                    names = [] if (node.module or "").split(".")[0] in own else [f".{node.module}"]
                else:
                    names = [node.module]
            else:
                continue
            bad += [f"{source.name}: {n}" for n in names if n.startswith(".") or n.split(".")[0] not in ALLOWED_TOP]
    return bad


def test_code_shipped_in_model_folders_and_trainer_checkpoints_imports_only_torch_transformers_stdlib(
    saved_model, trained_checkpoints
):
    out, _ = trained_checkpoints
    folders = [saved_model, out / "checkpoint-6"]
    for folder in folders:
        assert {p.name for p in folder.glob("*.py")} >= {"modeling_cl2cm.py", "configuration_cl2cm.py"}
        assert shipped_imports(folder) == [], folder


def test_saved_folders_hold_model_weights_only_as_safetensors(saved_model, trained_checkpoints):
    out, _ = trained_checkpoints
    assert not [p.name for p in saved_model.iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
    for name in checkpoints(out):
        files = [p.name for p in (out / name).iterdir()]
        assert "model.safetensors" in files and "training_args.bin" not in files
        state = [f for f in files if f.endswith(WEIGHT_SUFFIXES)]
        assert all(TRAINER_STATE_FILES.match(f) for f in state), state
        # Trainer's resumable state loads without unpickling arbitrary objects: weights_only=True,
        # with Trainer's own allowlist of numpy arrays and dtypes (the numpy RNG state).
        from transformers.trainer_pt_utils import safe_globals

        with safe_globals():
            for f in state:
                torch.load(out / name / f, weights_only=True)


def _project_python_files():
    skip = {".venv", ".git", "build", "runs", "node_modules", "__pycache__"}
    for path in REPO.rglob("*.py"):
        parts = set(path.relative_to(REPO).parts)
        if not parts & skip and not any(part.startswith(".") for part in path.relative_to(REPO).parts):
            yield path


def _unsafe_calls(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("pickle", "cPickle", "dill", "joblib", "shelve"):
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load"):
                safe = isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                if not safe:
                    found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
            if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy"):
                if isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value is True:
                    found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
            if name in ("pd.read_pickle", "pandas.read_pickle"):
                found.append(f"line {node.lineno}: {name}")
    # Code held in strings (run in subprocesses by tests and tools) obeys the same rule.
    for number, line in enumerate(text.splitlines(), start=1):
        if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line and not line.lstrip().startswith("#"):
            found.append(f"line {number}: {line.strip()[:80]}")
        if re.search(r"\bpickle\.loads?\(", line):
            found.append(f"line {number}: {line.strip()[:80]}")
    return sorted(set(found))


def test_project_never_unpickles():
    files = list(_project_python_files())
    assert len(files) > 20
    offenders = {str(p.relative_to(REPO)): calls for p in files if (calls := _unsafe_calls(p))}
    assert offenders == {}, offenders


def test_unpickling_detector_catches_what_it_must(tmp_path):
    bad = tmp_path / "bad.py"
    load = "torch." + "load"  # spelled apart, so this file does not trip the scan itself
    bad.write_text(f"import pickle\nimport torch, numpy as np\nx = {load}('a.pt')\ny = {load}('b', weights_only=False)\n"
                   f"z = np.load('c.npy', allow_pickle=True)\nok = {load}('d', weights_only=True)\n")
    found = _unsafe_calls(bad)
    assert "import pickle" in found and any("a.pt" in f for f in found) and any("weights_only=False" in f for f in found)
    assert any("allow_pickle" in f for f in found) and not any("'d'" in f for f in found)
