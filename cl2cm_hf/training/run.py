"""A CL2CM run: stage 1 (cross-lingual) and/or stage 2 (cross-modal) from one YAML recipe.

The entry points are `trainer/run.py` (`accelerate launch trainer/run.py <recipe>`) and the console
script `cl2cm-train`; both call `main`.

Writes `<output_dir>/cross_lingual/` and `<output_dir>/cross_modal/` (AutoModel-loadable folders with
tokenizer); the final folder also holds `training_config.yaml` (reproduces the run),
`test_results.json` and the model card. Trainer checkpoints live in `<output_dir>/checkpoints/<stage>`
and `--resume` continues from them.
"""

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from transformers import AutoModel, Trainer, TrainingArguments, set_seed
from transformers.utils import logging as hf_logging

from cl2cm_hf.atomic import atomic_directory, atomic_write_text, recover_directory
from cl2cm_hf.data import PairCollator, VisualFeatureStore
from cl2cm_hf.hub import build_card, rows_from_metrics
from cl2cm_hf.evaluation.encoding import encode_texts
from cl2cm_hf.modeling_cl2cm import check_safetensors_file
from cl2cm_hf.torch_state import cpu_threads, torch_threads

from cl2cm_hf.training.arguments import config_to_yaml, load_config, parse_config
from cl2cm_hf.evaluation.evaluator import CrossLingualEvaluator, CrossModalEvaluator
from cl2cm_hf.training.model_setup import build_cross_lingual, build_cross_modal
from cl2cm_hf.training.data_sources import RunData, build_run_data, first_caption_pairs
from cl2cm_hf.training.trainers import CrossLingualTrainer, CrossModalTrainer

logger = logging.getLogger("cl2cm")
STAGE_DIRS = {"cl": "cross_lingual", "cm": "cross_modal"}


def stage_training_args(training_args: TrainingArguments, stage: str, **changes) -> TrainingArguments:
    """The run's Trainer settings for one stage, with its own checkpoint folder."""
    output_dir = str(Path(training_args.output_dir) / "checkpoints" / STAGE_DIRS[stage])
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(training_args, output_dir=output_dir, **changes)


def last_checkpoint(folder: str) -> str | None:
    """The newest complete Trainer checkpoint. Checkpoints are renamed into place once complete
    (trainers.py); one without `trainer_state.json` (an older, in-place layout cut short) or with a
    damaged weight file is passed over, with a warning, for the one before."""
    candidates = sorted(
        (p for p in Path(folder).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for path in candidates:
        damaged = [f"{f.name}: {why}" for f in path.glob("*.safetensors") if (why := check_safetensors_file(str(f)))]
        if (path / "trainer_state.json").exists() and not damaged:
            return str(path)
        logger.warning("passing over incomplete checkpoint %s (%s)", path, "; ".join(damaged) or "no trainer_state.json")
    return None


def fit(trainer: Trainer, resume: bool) -> None:
    checkpoint = last_checkpoint(trainer.args.output_dir) if resume else None
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)


def save_stage(trainer: Trainer, model, tokenizer, folder: Path) -> None:
    """Write an AutoModel-loadable folder atomically (main process only)."""
    if trainer.is_world_process_zero():
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    trainer.accelerator.wait_for_everyone()


def train_cross_lingual(args, data: RunData, out: Path):
    model_args, data_args, cl2cm_args, training_args = args
    folder = out / STAGE_DIRS["cl"]
    recover_directory(folder)  # a kill between the two renames of a folder swap
    if cl2cm_args.resume and (folder / "config.json").exists():
        logger.info("stage 1 already complete in %s; loading it", folder)
        return AutoModel.from_pretrained(folder, trust_remote_code=True)
    if cl2cm_args.cl_first_caption_only:
        data = first_caption_pairs(data)
    set_seed(training_args.seed)  # each stage starts from the same RNG state, resumed or not
    model = build_cross_lingual(model_args, data.tokenizer, data_args.max_length)
    stage_args = stage_training_args(
        training_args, "cl", num_train_epochs=cl2cm_args.cl_num_train_epochs, learning_rate=cl2cm_args.cl_learning_rate
    )
    evaluator = CrossLingualEvaluator(
        data.validation_pairs, data.tokenizer, data_args.target_langs, data_args.max_length, model_args.text_prefix
    )
    trainer = CrossLingualTrainer(
        model=model,
        args=stage_args,
        train_dataset=data.train_pairs,
        eval_dataset=data.validation_pairs,
        data_collator=PairCollator(data.tokenizer, None, data_args.max_length, model_args.text_prefix),
        processing_class=data.tokenizer,
        cl2cm_args=cl2cm_args,
        evaluator=evaluator,
    )
    fit(trainer, cl2cm_args.resume)
    save_stage(trainer, trainer.model, data.tokenizer, folder)
    return trainer.model


def precompute_teacher(teacher, data: RunData, data_args, model_args, device):
    """Teacher sentence embeddings of every training pair, computed once and carried by the batches."""
    encode = dict(tokenizer=data.tokenizer, max_length=data_args.max_length, text_prefix=model_args.text_prefix, device=device)
    teacher = teacher.to(device).eval()
    source = encode_texts(lambda **kw: teacher.get_text_features(**kw, language="source"), texts=data.train_pairs["source_text"], **encode)
    target = encode_texts(lambda **kw: teacher.get_text_features(**kw, language="target"), texts=data.train_pairs["target_text"], **encode)
    pairs = data.train_pairs.add_column("teacher_source_embeds", source.tolist())
    return pairs.add_column("teacher_target_embeds", target.tolist()), float(teacher.scale())


def train_cross_modal(args, data: RunData, out: Path, teacher):
    model_args, data_args, cl2cm_args, training_args = args
    set_seed(training_args.seed)
    model = build_cross_modal(model_args, data.tokenizer, data_args.max_length, data.features.feature_dim, teacher)
    stage_args = stage_training_args(training_args, "cm")
    train_pairs, teacher_scale = data.train_pairs, None
    if cl2cm_args.lambda_kt and cl2cm_args.precompute_teacher:
        train_pairs, teacher_scale = precompute_teacher(teacher, data, data_args, model_args, stage_args.device)
        teacher = None
    evaluator = CrossModalEvaluator(
        data.validation_queries, data.features, data.tokenizer, data_args.target_langs, data_args.max_length, model_args.text_prefix
    )
    trainer = CrossModalTrainer(
        model=model,
        args=stage_args,
        train_dataset=train_pairs,
        eval_dataset=data.validation_queries,
        data_collator=PairCollator(data.tokenizer, data.features, data_args.max_length, model_args.text_prefix),
        processing_class=data.tokenizer,
        cl2cm_args=cl2cm_args,
        evaluator=evaluator,
        teacher_model=teacher if cl2cm_args.lambda_kt else None,
        teacher_scale=teacher_scale,
    )
    fit(trainer, cl2cm_args.resume)
    return trainer


def results_table(metrics: dict[str, float], langs) -> str:
    keys = ["t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "sumr"]
    lines = ["| lang | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for lang in langs:
        lines.append(f"| {lang} | " + " | ".join(f"{metrics[f'{lang}_{k}']:.1f}" for k in keys) + " |")
    return "\n".join(lines)


def finish(trainer: CrossModalTrainer, data: RunData, args, values: dict, out: Path) -> Path:
    """Test-set evaluation, then the final folder: model, tokenizer, recipe, results, card."""
    model_args, data_args, cl2cm_args, _ = args
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    test_evaluator = CrossModalEvaluator(
        data.test_queries, data.features, data.tokenizer, data_args.target_langs, data_args.max_length, model_args.text_prefix
    )
    test_ranks = test_evaluator.ranks(model)
    metrics = test_evaluator.metrics(test_ranks)
    folder = out / STAGE_DIRS["cm"]
    if trainer.is_world_process_zero():
        table = results_table(metrics, data_args.target_langs)
        print(f"\nTest retrieval ({data.name}, target-language queries):\n{table}\n", flush=True)
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            data.tokenizer.save_pretrained(tmp)
            (tmp / "training_config.yaml").write_text(config_to_yaml(values))
            (tmp / "test_results.json").write_text(json.dumps(metrics, indent=2))
            save_gallery(data.features, test_evaluator.gallery_ids, tmp / "test_gallery")
            rows = rows_from_metrics(metrics, dataset=data.name, model=str(folder))
            build_card(tmp, results=rows, training_config=values, ranks=test_ranks)
        atomic_write_text(out / "test_results.md", table + "\n")
    trainer.accelerator.wait_for_everyone()
    return folder


def save_gallery(store, visual_ids, folder: Path) -> None:
    """The test gallery's features, so the query demo runs from the final folder alone."""
    features, mask = store.lookup(visual_ids)
    lengths = None if mask is None else mask.sum(1)
    VisualFeatureStore.from_arrays(visual_ids, features, lengths=lengths).save(folder)


def run_query_in_fresh_process(folder: Path, query: str, captions: dict[str, str]) -> None:
    """Reload the final model in a new interpreter that cannot import cl2cm_hf (the checkpoint's own
    code runs) and search the test gallery with one query."""
    script = Path(__file__).resolve().parents[1] / "evaluation" / "query.py"  # runs without cl2cm_hf
    folder = folder.resolve()
    shown = folder / "gallery_captions.json"
    atomic_write_text(shown, json.dumps(captions, ensure_ascii=False))
    subprocess.run(
        [sys.executable, str(script), str(folder), query, "--gallery", str(folder / "test_gallery"), "--captions", str(shown)],
        check=True,
        cwd=str(folder),
    )


def train(argv: list[str]) -> dict:
    """Run the recipe `argv` (a YAML path and/or `--key value` overrides); returns the test metrics
    (empty for a stage-1-only run)."""
    argv = list(argv)
    config_path = argv.pop(0) if argv and not argv[0].startswith("--") else None
    values = load_config(config_path, argv)
    args = parse_config(values)
    with torch_threads(cpu_threads(args[2].cpu_threads)):
        return run_recipe(args, values)


def run_recipe(args, values: dict) -> dict:
    """The stages of a parsed recipe (`train` applies its CPU thread setting around them)."""
    model_args, data_args, cl2cm_args, training_args = args
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)
    out = Path(training_args.output_dir)
    data = build_run_data(data_args, model_args, training_args)

    teacher = None
    if cl2cm_args.stage in ("cl", "both"):
        teacher = train_cross_lingual(args, data, out)
    elif cl2cm_args.cross_lingual_model:
        teacher = AutoModel.from_pretrained(cl2cm_args.cross_lingual_model, trust_remote_code=True)
    elif cl2cm_args.lambda_kt:
        raise ValueError("stage cm with lambda_kt > 0 needs cross_lingual_model (a stage-1 folder)")
    if cl2cm_args.stage == "cl":
        return {}

    trainer = train_cross_modal(args, data, out, teacher)
    folder = finish(trainer, data, args, values, out)
    if trainer.is_world_process_zero():
        if cl2cm_args.push_to_hub_id:
            from cl2cm_hf.hub import push_checkpoint

            push_checkpoint(folder, cl2cm_args.push_to_hub_id)
        if cl2cm_args.query:
            run_query_in_fresh_process(folder, cl2cm_args.query, data.gallery_captions)
    return json.loads((folder / "test_results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    """Console entry point: exit status 0 after a successful run (errors raise, so non-zero)."""
    # One Trainer bar per stage is the run's progress; transformers' bars of one-shard saves and loads
    # (here and in the query's child process, which inherits the variable) are noise next to it.
    # Process-wide because transformers has no per-call switch; HF_HUB_DISABLE_PROGRESS_BARS=0 keeps them.
    if os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1") == "1":
        hf_logging.disable_progress_bar()
    train(sys.argv[1:] if argv is None else argv)
    return 0
