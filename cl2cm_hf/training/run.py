"""A CL2CM run: stage 1 (cross-lingual) and/or stage 2 (cross-modal) from one YAML recipe.

`run(settings)` runs a parsed recipe (`RunSettings`) and returns its `RunResult`; `train(argv)` is the
same from a recipe path and ``--key value`` tokens. The command line (`trainer/run.py`, `cl2cm-train`)
is `cl2cm_hf.cli.train`.

Writes `<output_dir>/cross_lingual/` and `<output_dir>/cross_modal/` (AutoModel-loadable folders with
tokenizer); the final folder also holds `training_config.yaml` (reproduces the run),
`test_results.json` and the model card. Trainer checkpoints live in `<output_dir>/checkpoints/<stage>`
and `--resume` continues from them.
"""

import dataclasses
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModel, Trainer, TrainingArguments, set_seed

from cl2cm_hf.atomic import atomic_directory, atomic_write_text, folder_target, recover_directory
from cl2cm_hf.data import ImagePathStore, PairCollator, VisualFeatureStore
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.evaluation.evaluator import CrossLingualEvaluator, CrossModalEvaluator
from cl2cm_hf.evaluation.records import TEST_RESULTS, MetricRecord, save_records
from cl2cm_hf.hub import build_card, metrics_table, push_checkpoint
from cl2cm_hf.hub.local_paths import config_to_yaml, publishable_settings
from cl2cm_hf.inference import encode_texts
from cl2cm_hf.modeling_cl2cm import check_safetensors_file
from cl2cm_hf.processing_cl2cm import build_processor
from cl2cm_hf.torch_state import cpu_threads, torch_threads
from cl2cm_hf.training import neighbour_batches
from cl2cm_hf.training.checkpoints import CHECKPOINT_COMPLETE, checkpoint_folders
from cl2cm_hf.training.data_sources import RunData, build_run_data, check_fits_data, first_caption_pairs
from cl2cm_hf.training.frozen_layers import FrozenLayerStore
from cl2cm_hf.training.model_setup import build_cross_lingual, build_cross_modal, check_teacher_folder, load_teacher, prepare_teacher
from cl2cm_hf.training.recipe import RunSettings
from cl2cm_hf.training.run_record import (
    RecordStamp,
    RunMismatchError,
    changes_since,
    check_owned,
    copy_record,
    describe_changes,
    read_record,
    result_settings,
    take_output_dir,
)
from cl2cm_hf.training.trainers import CrossLingualTrainer, CrossModalTrainer

logger = logging.getLogger("cl2cm")
STAGE_DIRS = {"cl": "cross_lingual", "cm": "cross_modal"}


def stage_training_args(training_args: TrainingArguments, stage: str, **changes) -> TrainingArguments:
    """The run's Trainer settings for one stage, with its own checkpoint folder."""
    output_dir = str(Path(training_args.output_dir) / "checkpoints" / STAGE_DIRS[stage])
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(training_args, output_dir=output_dir, **changes)


def last_checkpoint(folder: str) -> str | None:
    """The newest complete Trainer checkpoint: one marked complete once every process had written it
    (`CHECKPOINT_COMPLETE`, checkpoints.py) and whose weight files are whole. Any other (a save cut
    short, a checkpoint from before the mark existed, damaged weights) is passed over, with a warning,
    for the one before."""
    for path in reversed(checkpoint_folders(Path(folder))):
        damaged = [f"{f.name}: {why}" for f in path.glob("*.safetensors") if (why := check_safetensors_file(str(f)))]
        if (path / CHECKPOINT_COMPLETE).exists() and not damaged:
            return str(path)
        logger.warning("passing over incomplete checkpoint %s (%s)", path, "; ".join(damaged) or f"no {CHECKPOINT_COMPLETE}")
    return None


def fit(trainer: Trainer, resume: bool, out: Path) -> None:
    """Train; a stage that skipped too many steps (`max_skipped_fraction`) fails here, before any
    of it is published. Every checkpoint is stamped with the run record of `out` (if any), so a
    resumed run names the settings changed since its checkpoint was written (`--resume_allow_changes`)
    and a checkpoint that cannot continue under them fails naming them, not as a damaged file."""
    record = read_record(out)
    if record is not None:
        trainer.training_states.append(RecordStamp(record))
    checkpoint = last_checkpoint(trainer.args.output_dir) if resume else None
    changes = changes_since(Path(checkpoint), record) if checkpoint and record is not None else {}
    if checkpoint:
        logger.info("resuming from %s%s", checkpoint, f" with changed settings: {describe_changes(changes)}" if changes else "")
        queue = getattr(trainer, "relation_queue", None)
        if queue is not None and {"kt_queue_size", "lambda_kt"} & set(changes):
            queue.start_empty_without_file = True  # the checkpoint was written without this queue
    step = int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0
    try:
        if changes and (misfit := _weights_misfit(Path(checkpoint), trainer.model)):
            raise CL2CMError(f"its weights do not fit the model these settings build ({misfit})")
        trainer.train(resume_from_checkpoint=checkpoint)
    except (ValueError, RuntimeError, KeyError, OSError) as err:
        if not changes or trainer.state.global_step > step:
            raise
        raise RunMismatchError(
            f"--resume: {checkpoint} does not continue under the settings changed since it was written "
            f"({describe_changes(changes)}): {err}; resume with the recorded settings or start a new run in another "
            "output_dir"
        ) from err
    trainer.check_skipped_steps()


def _weights_misfit(checkpoint: Path, model) -> str | None:
    """The first weights of `checkpoint` that `model` has not, or has in another shape (read from
    the safetensors header), or None. Weights the file lacks are not counted: tied ones are saved once."""
    path = checkpoint / "model.safetensors"
    if not path.is_file():
        return None
    own = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(str(path), framework="pt") as handle:
        saved = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    misfits = [f"{name} {shape} saved, {own.get(name, 'none')} now" for name, shape in saved.items() if own.get(name) != shape]
    return "; ".join(misfits[:3]) + (f"; {len(misfits) - 3} more" if len(misfits) > 3 else "") if misfits else None


def save_stage(trainer: Trainer, model, tokenizer, folder: Path) -> None:
    """Write an AutoModel-loadable folder atomically (main process only), with the run's record."""
    if trainer.is_world_process_zero():
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            copy_record(folder.parent, tmp)
    trainer.accelerator.wait_for_everyone()


def train_cross_lingual(settings: RunSettings, data: RunData, processor, out: Path, frozen_layers: FrozenLayerStore | None = None):
    """Stage 1; returns the trained network (loaded from its folder when `resume` finds it complete).
    `processor`: the run's (tokenizer and text prefix); `frozen_layers`: the run's store under
    `cache_frozen_text_layers`."""
    model_args, data_args, cl2cm_args, training_args = settings.model, settings.data, settings.method, settings.training
    folder = out / STAGE_DIRS["cl"]
    recover_directory(folder)  # a kill between the two renames of a folder swap
    if cl2cm_args.resume and (folder / "config.json").exists():
        check_owned(folder, read_record(out), "stage-1 folder")
        logger.info("stage 1 already complete in %s; loading it", folder)
        return AutoModel.from_pretrained(folder, trust_remote_code=True)
    if cl2cm_args.cl_first_caption_only:
        data = first_caption_pairs(data)
    set_seed(training_args.seed)  # each stage starts from the same RNG state, resumed or not
    model = build_cross_lingual(model_args, processor.tokenizer, data_args.max_length, frozen_layers)
    stage_args = stage_training_args(
        training_args, "cl", num_train_epochs=cl2cm_args.cl_num_train_epochs, learning_rate=cl2cm_args.cl_learning_rate
    )
    evaluator = CrossLingualEvaluator(
        data.validation_pairs, processor, data_args.target_langs, data_args.max_length, dataset=data.name, split="validation"
    )
    trainer = CrossLingualTrainer(
        model=model,
        args=stage_args,
        train_dataset=data.train_pairs,
        eval_dataset=data.validation_pairs,
        data_collator=PairCollator(processor, None, data_args.max_length),
        processing_class=processor.tokenizer,
        cl2cm_args=cl2cm_args,
        evaluator=evaluator,
    )
    fit(trainer, cl2cm_args.resume, out)
    save_stage(trainer, trainer.model, processor.tokenizer, folder)
    return trainer.model


def precompute_teacher(teacher, data: RunData, processor, max_length: int, device, item_keys: bool = False):
    """Teacher sentence embeddings of every training pair, computed once and carried by the batches;
    `processor`: the one the teacher tokenizes with (its own, or the run's). `item_keys`
    (``kt_teacher_keys: item``): each pair's source key is the normalised mean over its item's rows
    (all its source captions), so the teacher relates an MT caption to items, not to one caption."""
    encode = dict(processor=processor, max_length=max_length, device=device)
    teacher = teacher.to(device).eval()
    source = encode_texts(lambda **kw: teacher.get_text_features(**kw, language="source"), texts=data.train_pairs["source_text"], **encode)
    target = encode_texts(lambda **kw: teacher.get_text_features(**kw, language="target"), texts=data.train_pairs["target_text"], **encode)
    if item_keys:
        items, rows, keys = neighbour_batches.item_keys(data.train_pairs["visual_id"], source.float().numpy())
        for item, key in zip(items, torch.from_numpy(keys).to(source.dtype)):
            source[rows[item]] = key
    pairs = data.train_pairs.add_column("teacher_source_embeds", source.tolist())
    return pairs.add_column("teacher_target_embeds", target.tolist()), float(teacher.scale())


def train_cross_modal(
    settings: RunSettings, data: RunData, processor, out: Path, teacher, frozen_layers: FrozenLayerStore | None = None,
    teacher_processor=None,
):
    """Stage 2 from the stage-1 network `teacher` (None: no stage 1); returns its trainer. The stage-1
    network becomes the frozen teacher (`prepare_teacher`) and the text tower starts as a copy of it.
    `teacher_processor`: the teacher's own processor where it tokenizes differently (`load_teacher`)."""
    model_args, data_args, cl2cm_args, training_args = settings.model, settings.data, settings.method, settings.training
    set_seed(training_args.seed)
    if teacher is not None:
        teacher = prepare_teacher(teacher, model_args, frozen_layers)
    model = build_cross_modal(
        model_args, processor.tokenizer, data_args.max_length, data.features.feature_dim, teacher, frozen_layers
    )
    stage_args = stage_training_args(training_args, "cm")
    train_pairs, teacher_scale = data.train_pairs, None
    if cl2cm_args.needs_teacher_embeddings and cl2cm_args.precompute_teacher:
        train_pairs, teacher_scale = precompute_teacher(
            teacher, data, teacher_processor or processor, data_args.max_length, stage_args.device, cl2cm_args.kt_teacher_keys == "item"
        )
        teacher = teacher_processor = None
    evaluator = CrossModalEvaluator(
        data.validation_queries, data.features, processor, data_args.target_langs, data_args.max_length,
        dataset=data.name, split="validation",
    )
    trainer = CrossModalTrainer(
        model=model,
        args=stage_args,
        train_dataset=train_pairs,
        eval_dataset=data.validation_queries,
        data_collator=PairCollator(processor, data.features, data_args.max_length, teacher_processor=teacher_processor),
        processing_class=processor.tokenizer,
        cl2cm_args=cl2cm_args,
        evaluator=evaluator,
        teacher_model=teacher if cl2cm_args.lambda_kt else None,
        teacher_scale=teacher_scale,
    )
    fit(trainer, cl2cm_args.resume, out)
    return trainer


def finish(trainer: CrossModalTrainer, data: RunData, processor, settings: RunSettings, out: Path) -> tuple[Path, list[MetricRecord]]:
    """Test-set evaluation, then the final folder: model, processor, recipe, results
    (`test_results.json`: a list of metric records), card; returns the folder and the records."""
    data_args, values = settings.data, settings.recipe
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    test_evaluator = CrossModalEvaluator(
        data.test_queries, data.features, processor, data_args.target_langs, data_args.max_length, dataset=data.name, split="test"
    )
    test_ranks = test_evaluator.ranks(model)
    records = test_evaluator.metrics(test_ranks)
    folder = out / STAGE_DIRS["cm"]
    if trainer.is_world_process_zero():
        table = metrics_table(records)
        print(f"\nTest retrieval ({data.name}, target-language queries):\n{table}\n", flush=True)
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)  # the tokenizer, the text prefix and an image store's image and video processors
            (tmp / "training_config.yaml").write_text(config_to_yaml(values))
            copy_record(out, tmp)
            save_records(records, tmp / TEST_RESULTS)
            save_gallery(data.features, test_evaluator.gallery_ids, tmp / "test_gallery")
            build_card(tmp, records, training_config=publishable_settings(values)[0], ranks=test_ranks, model_name=out.resolve().name,
                       target_languages=data_args.target_langs, visual_modality="video" if data.features.is_video else "image")
        atomic_write_text(out / "test_results.md", table + "\n")
    trainer.accelerator.wait_for_everyone()
    return folder, records


def save_gallery(store, visual_ids, folder: Path) -> None:
    """The test gallery (features, or a copy of the image files), so the query demo runs from the final folder alone."""
    if isinstance(store, ImagePathStore):
        store.save(folder, visual_ids)
        return
    features, mask = store.lookup(visual_ids)
    lengths = None if mask is None else mask.sum(1)
    VisualFeatureStore.from_arrays(visual_ids, features, lengths=lengths).save(folder)


@dataclasses.dataclass
class RunResult:
    """What a run made: the test metric records (empty for a stage-1-only run; `records.flat_metrics`
    gives ``{"de_sumr": ...}``), the final cross-modal folder (None without stage 2) and the captions
    of its test gallery (for a query demo)."""

    records: list[MetricRecord]
    folder: Path | None = None
    gallery_captions: dict[str, str] = dataclasses.field(default_factory=dict)


def run(settings: RunSettings) -> RunResult:
    """Run a parsed recipe under its CPU thread setting."""
    with torch_threads(cpu_threads(settings.method.cpu_threads)):
        return run_recipe(settings)


def train(argv: list[str]) -> list[MetricRecord]:
    """Run the recipe `argv` (a YAML path and/or ``--key value`` overrides); returns the test metric records."""
    argv = list(argv)
    config_path = argv.pop(0) if argv and not argv[0].startswith("--") else None
    return run(RunSettings.load(config_path, argv)).records


def run_recipe(settings: RunSettings) -> RunResult:
    """The stages of a parsed recipe (`run` applies its CPU thread setting around them)."""
    model_args, data_args, cl2cm_args, training_args = settings.model, settings.data, settings.method, settings.training
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)
    out = Path(training_args.output_dir)
    if cl2cm_args.stage == "cm" and cl2cm_args.cross_lingual_model:
        check_teacher_folder(cl2cm_args.cross_lingual_model)  # a bad teacher is named before any data is built
    for stage_dir in STAGE_DIRS.values():
        folder_target(out / stage_dir)  # a stage path that is a file or a dangling link: refused before training
    take_output_dir(
        out, result_settings(settings.groups, settings.recipe), resume=cl2cm_args.resume, overwrite=cl2cm_args.overwrite_output_dir,
        allow_changes=cl2cm_args.resume_allow_changes,
    )
    data = build_run_data(data_args, model_args, training_args)
    check_fits_data(data, cl2cm_args, training_args)
    # The run's one processor: tokenizer, text prefix and (an image store's) image and video processors.
    processor = build_processor(data.tokenizer, model_args.text_prefix, getattr(data.features, "image_processor", None),
                                getattr(data.features, "video_processor", None))

    # One store of frozen-layer outputs for the run: stage 1, stage 2 and the teacher share it.
    frozen_layers = FrozenLayerStore() if model_args.cache_frozen_text_layers else None
    teacher = teacher_processor = None
    if cl2cm_args.stage in ("cl", "both"):
        teacher = train_cross_lingual(settings, data, processor, out, frozen_layers)
    elif cl2cm_args.cross_lingual_model:
        teacher, teacher_processor = load_teacher(
            cl2cm_args.cross_lingual_model, processor, data.train_pairs, model_args.init_text_from_cross_lingual
        )
    if cl2cm_args.stage == "cl":
        return RunResult([])

    trainer = train_cross_modal(settings, data, processor, out, teacher, frozen_layers, teacher_processor)
    folder, records = finish(trainer, data, processor, settings, out)
    if trainer.is_world_process_zero() and cl2cm_args.push_to_hub_id:
        push_checkpoint(folder, cl2cm_args.push_to_hub_id)
    return RunResult(records, folder, data.gallery_captions)
