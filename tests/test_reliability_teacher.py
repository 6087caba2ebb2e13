"""A stage-1 teacher given by path (`cross_lingual_model`) and stages whose steps were skipped.

- The teacher folder is checked before any data is built (missing path, file, folder that is not a
  checkpoint, stage-2 folder, another model, `auto_map` outside the folder); a teacher whose
  tokenizer differs from the run's is fed with its own token ids, or refused where the student text
  tower starts from it.
- A stage that skipped more than `max_skipped_fraction` of its optimizer steps (on_nonfinite: skip)
  fails at its end naming the loss term and its settings, and publishes nothing.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import features_config
from test_reliability_outputs import tiny_trainer
from transformers import AutoTokenizer, BertConfig

import cl2cm_hf.training.run as run_module
import cl2cm_hf.training.trainers as trainers_module
from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalModel
from cl2cm_hf.checkpoint_safety import UnsafeCheckpointError
from cl2cm_hf.data import build_demo_world, train_demo_tokenizer
from cl2cm_hf.losses import relational_distillation, sinkhorn_ot_loss
from cl2cm_hf.training.method_arguments import CL2CMArguments
from cl2cm_hf.training.model_setup import TeacherError
from cl2cm_hf.training.nonfinite import TooManySkippedStepsError
from cl2cm_hf.training.run import train
from cl2cm_hf.training.run_record import RUN_RECORD

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

REPO = Path(__file__).resolve().parents[1]
SHRUNK = [
    "--demo_items", "128", "--demo_validation_items", "32", "--demo_test_items", "32", "--text_num_layers", "1",
    "--cl_num_train_epochs", "1", "--num_train_epochs", "1", "--report_to", "none", "--query", "null",
    "--dataloader_num_workers", "0", "--per_device_train_batch_size", "16",
]
MAX_LENGTH = 40  # demo.yaml


def demo_argv(out: Path, *more: str) -> list[str]:
    return [str(REPO / "trainer" / "configs" / "demo.yaml"), "--output_dir", str(out), *SHRUNK, *more]


@pytest.fixture(scope="module")
def other_vocab_teacher(tmp_path_factory) -> Path:
    """A stage-1 folder whose tokenizer (a 300-token vocabulary) differs from the demo run's."""
    folder = tmp_path_factory.mktemp("teacher") / "cross_lingual"
    tokenizer = train_demo_tokenizer(build_demo_world(seed=7, num_items=64, val_items=8, test_items=8).tokenizer_corpus(), vocab_size=300)
    text = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    CL2CMCrossLingualModel(CL2CMCrossLingualConfig(text_config=text.to_dict(), projection_dim=16)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def refuse_data(*args, **kwargs):
    raise AssertionError("the run built its data before naming the bad teacher")


# --- item 3: the teacher folder --------------------------------------------------------------------
def _bad_teachers(root: Path, good: Path) -> dict[str, tuple[Path, type, str]]:
    """name -> (path, error, message pattern)."""
    (root / "file.txt").write_text("not a model")
    (root / "empty").mkdir()
    (root / "bad_json").mkdir()
    (root / "bad_json" / "config.json").write_text("{not json")
    stage2 = root / "stage2"
    CL2CMCrossModalModel(features_config()).save_pretrained(stage2)
    (root / "bert").mkdir()
    (root / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    no_weights = root / "no_weights"
    shutil.copytree(good, no_weights)
    (no_weights / "model.safetensors").unlink()
    outside = root / "outside"
    shutil.copytree(good, outside)
    config = json.loads((outside / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "/tmp/evil.Model"}
    (outside / "config.json").write_text(json.dumps(config))
    return {
        "missing": (root / "missing", TeacherError, r"missing'?: no such file or folder; expected a stage-1 model folder"),
        "file": (root / "file.txt", TeacherError, r"file\.txt'? is a file; expected a stage-1 model folder"),
        "empty": (root / "empty", TeacherError, r"empty'? is not a model checkpoint \(no config\.json\)"),
        "bad_json": (root / "bad_json", TeacherError, r"config\.json: not valid JSON"),
        "stage2": (stage2, TeacherError, r"stage2'? is a stage-2 \(cross-modal\) model folder \(model_type 'cl2cm_cross_modal'\)"),
        "bert": (root / "bert", TeacherError, r"model_type='bert'; expected a stage-1 model folder"),
        "no_weights": (no_weights, TeacherError, r"no_weights'? has no model\.safetensors"),
        "auto_map": (outside, UnsafeCheckpointError, r"auto_map\['AutoModel'\] = '/tmp/evil\.Model' is refused"),
    }


BAD_TEACHERS = ["missing", "file", "empty", "bad_json", "stage2", "bert", "no_weights", "auto_map"]


@pytest.mark.parametrize("case", BAD_TEACHERS)
def test_a_bad_teacher_is_named_before_any_data_is_built(tmp_path, monkeypatch, other_vocab_teacher, case):
    path, error, pattern = _bad_teachers(tmp_path, other_vocab_teacher)[case]
    monkeypatch.setattr(run_module, "build_run_data", refuse_data)
    with pytest.raises(error, match=pattern):
        train(demo_argv(tmp_path / "run", "--stage", "cm", "--cross_lingual_model", str(path)))
    assert not (tmp_path / "run").exists()


def test_a_teacher_with_another_tokenizer_is_refused_where_the_student_starts_from_it(tmp_path, other_vocab_teacher):
    """init_text_from_cross_lingual: the student's text tower reads the teacher's token ids too."""
    with pytest.raises(TeacherError, match=r"tokenizes differently from this run: \d+ of \d+ training texts get other token ids.*"
                       r"set tokenizer: '.*cross_lingual'.*or init_text_from_cross_lingual: false"):
        train(demo_argv(tmp_path / "run", "--stage", "cm", "--cross_lingual_model", str(other_vocab_teacher)))
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("precompute", [False, True])
def test_a_teacher_with_another_tokenizer_is_fed_its_own_token_ids(tmp_path, monkeypatch, other_vocab_teacher, precompute):
    """Every row the teacher encodes is its own tokenizer's ids of a training text (the collator's
    teacher_* ids, or the precomputed embeddings through the encode path)."""
    fed, seen = [], {}
    real_load, real_data = run_module.load_teacher, run_module.build_run_data

    def load_teacher(*args, **kwargs):
        teacher, processor = real_load(*args, **kwargs)
        encode = teacher.get_text_features

        def spy(input_ids, attention_mask, **kw):
            fed.extend(tuple(row[mask.bool()].tolist()) for row, mask in zip(input_ids.cpu(), attention_mask.cpu()))
            return encode(input_ids, attention_mask, **kw)

        teacher.get_text_features = spy
        return teacher, processor

    def build_run_data(*args, **kwargs):
        seen["data"] = real_data(*args, **kwargs)
        return seen["data"]

    monkeypatch.setattr(run_module, "load_teacher", load_teacher)
    monkeypatch.setattr(run_module, "build_run_data", build_run_data)
    train(demo_argv(tmp_path / "run", "--stage", "cm", "--cross_lingual_model", str(other_vocab_teacher),
                    "--init_text_from_cross_lingual", "false", "--precompute_teacher", str(precompute).lower()))
    pairs = seen["data"].train_pairs
    texts = list(pairs["source_text"]) + list(pairs["target_text"])
    own = {tuple(ids) for ids in AutoTokenizer.from_pretrained(other_vocab_teacher)(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]}
    run_ids = {tuple(ids) for ids in seen["data"].tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]}
    assert fed and set(fed) <= own
    assert len(own - run_ids) > len(own) // 2  # the two tokenizers really differ
    assert (tmp_path / "run" / "cross_modal" / "config.json").is_file()


def test_a_teacher_folder_of_a_stage_1_run_with_the_same_recipe_still_trains_stage_2(tmp_path):
    """The usual case: `stage: cl`, then `stage: cm` from its folder (the same tokenizer)."""
    train(demo_argv(tmp_path / "stage1", "--stage", "cl"))
    records = train(demo_argv(tmp_path / "stage2", "--stage", "cm", "--cross_lingual_model", str(tmp_path / "stage1" / "cross_lingual")))
    assert records and (tmp_path / "stage2" / "cross_modal" / "README.md").is_file()


# --- item 5: a stage that skipped its steps publishes nothing -------------------------------------
def always_nan(real):
    def loss(*args, **kwargs):
        return real(*args, **kwargs) * float("nan")

    return loss


def published(out: Path) -> list[str]:
    """What a run left outside its Trainer checkpoints and its run record (run.json, local)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if "checkpoints" not in p.relative_to(out).parts and p.name != RUN_RECORD)


def test_a_stage_1_whose_steps_were_all_skipped_fails_naming_the_term_and_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(trainers_module, "sinkhorn_ot_loss", always_nan(sinkhorn_ot_loss))
    out = tmp_path / "run"
    with pytest.raises(TooManySkippedStepsError, match=r"stage 1 \(cross-lingual\): (\d+) of \1 optimizer steps \(100%\) were skipped.*"
                       r"max_skipped_fraction: 0\.05.*loss term word non-finite in \d+ batch\(es\), governed by lambda_word, ot_epsilon"):
        train(demo_argv(out, "--on_nonfinite", "skip"))
    assert published(out) == []


def test_a_stage_2_whose_steps_were_all_skipped_fails_naming_the_term_and_publishes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(trainers_module, "relational_distillation", always_nan(relational_distillation))
    out = tmp_path / "run"
    with pytest.raises(TooManySkippedStepsError, match=r"stage 2 \(cross-modal\): .*loss term kt non-finite .*governed by lambda_kt, kt_temperature"):
        train(demo_argv(out, "--on_nonfinite", "skip"))
    assert not (out / "cross_modal").exists() and not (out / "test_results.md").exists()
    assert not list(out.rglob("README.md")) and not list(out.rglob("test_results.json"))
    assert (out / "cross_lingual" / "config.json").is_file()  # stage 1 was sound


@pytest.mark.parametrize("limit, fails", [(0.2, False), (0.1, True), (0.0, True)])
def test_skipped_steps_up_to_max_skipped_fraction_are_tolerated(tmp_path, monkeypatch, limit, fails):
    """1 of 5 steps skipped: allowed up to max_skipped_fraction 0.2."""
    calls = [0]

    def nan_once(*args, **kwargs):
        calls[0] += 1
        value = sinkhorn_ot_loss(*args, **kwargs)
        return value * float("nan") if calls[0] == 2 else value

    monkeypatch.setattr(trainers_module, "sinkhorn_ot_loss", nan_once)
    cl2cm = CL2CMArguments(ot_iterations=5, on_nonfinite="skip", max_skipped_fraction=limit)
    trainer = tiny_trainer(tmp_path, max_steps=5, save_strategy="no", cl2cm=cl2cm)
    trainer.train()
    assert (trainer.skipped_steps, trainer.optimizer_steps) == (1, 5)
    if fails:
        with pytest.raises(TooManySkippedStepsError, match=r"1 of 5 optimizer steps \(20%\).*loss term word non-finite in 1 batch"):
            trainer.check_skipped_steps()
    else:
        trainer.check_skipped_steps()
