"""The two CL2CM stages as thin `transformers.Trainer` subclasses.

The losses are the pure functions of `cl2cm_hf.losses`; these classes only route a batch through
the model, weight the terms, log each term, guard against non-finite values and replace Trainer's
loss-based evaluation by retrieval metrics (an evaluator object, as sentence-transformers does).
"""

import dataclasses
from collections import Counter, defaultdict

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.evaluation.records import flat_metrics
from cl2cm_hf.losses import info_nce, relational_distillation, sinkhorn_ot_loss, vse_triplet
from cl2cm_hf.training.checkpoints import CompleteCheckpoints
from cl2cm_hf.training.neighbour_batches import teacher_neighbour_sampler
from cl2cm_hf.training.nonfinite import TERM_SETTINGS, GuardedOptimizer, NonFiniteLossError, TooManySkippedStepsError, grads_finite
from cl2cm_hf.training.relation_queue import RelationQueue


class _CL2CMTrainer(Trainer):
    """Shared by both stages: weighted loss terms, their logging, retrieval evaluation, checkpoints
    marked complete (`CompleteCheckpoints`), and skipped optimizer steps for batches whose loss is
    not finite (`GuardedOptimizer`), counted per loss term for `check_skipped_steps`."""

    stage_name = "this stage"

    def __init__(self, model=None, args=None, *more, cl2cm_args, evaluator=None, **kwargs):
        # Checkpoint rotation runs in CompleteCheckpoints, after the completion mark: Trainer's own
        # (which deletes in place) gets no limit.
        save_total_limit = args.save_total_limit if args is not None else None
        if save_total_limit is not None:
            args = dataclasses.replace(args, save_total_limit=None)
        super().__init__(model, args, *more, **kwargs)
        self.training_states: list = []  # saved with each checkpoint (see CompleteCheckpoints)
        self.add_callback(CompleteCheckpoints(save_total_limit, self.training_states))
        self.cl2cm_args = cl2cm_args
        self.evaluator = evaluator
        self._term_sums = defaultdict(float)
        self._term_steps = 0
        self.skipped_batches = 0
        self.skipped_steps = 0
        self.optimizer_steps = 0  # steps taken or skipped
        self.nonfinite_terms: Counter[str] = Counter()  # loss term (or "gradient") -> batches (steps) it was non-finite
        self._finite_batches = 0  # finite micro-batches since the last optimizer step
        self.last_batch_finite = True  # whether the last `combine` had only finite terms

    def contrastive(self, a, b, scale):
        if self.cl2cm_args.loss == "triplet":
            return vse_triplet(a, b, margin=self.cl2cm_args.margin)
        return info_nce(a, b, 1.0 / scale)

    def combine(self, model, terms: dict[str, tuple[float, torch.Tensor]]) -> torch.Tensor:
        """Weighted sum of named loss terms; non-finite terms stop the run or skip the batch."""
        bad = [name for name, (_, value) in terms.items() if not torch.isfinite(value.detach()).all()]
        self.last_batch_finite = not bad
        if bad:
            where = f"step {self.state.global_step + 1}, loss term(s) {', '.join(bad)}"
            if self.cl2cm_args.on_nonfinite == "stop":
                raise NonFiniteLossError(f"non-finite loss at {where}; set on_nonfinite: skip to skip such batches")
            self.skipped_batches += 1
            self.nonfinite_terms.update(bad)
            self._term_sums["skipped_batches"] += 1
            # Zero loss attached to every trainable parameter: no gradient from this batch, and DDP
            # still sees a gradient for each parameter. If no batch of the optimizer step was
            # finite, the step itself is skipped (see `_should_step`): Adam's momentum
            # and weight decay would otherwise still move the weights.
            return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        for name, (_, value) in terms.items():
            self._term_sums[f"loss_{name}"] += float(value.detach())
        self._term_steps += 1
        if model.training:
            self._finite_batches += 1
        return sum(weight * value for weight, value in terms.values() if weight)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (and the count of skipped batches) to
        Trainer's training logs."""
        if "loss" in logs and (self._term_sums or self.args.world_size > 1):
            sums, steps = self._term_sums_over_processes()
            for name, total in sums.items():
                if name in ("skipped_batches", "skipped_steps"):
                    logs[name] = int(total)
                elif steps:
                    logs[name] = round(total / steps, 6)
            self._term_sums.clear()
            self._term_steps = 0
        super().log(logs, start_time)

    def _term_sums_over_processes(self) -> tuple[dict[str, float], int]:
        """The term sums and step counts added over processes (like Trainer's own `loss`), so the
        logged terms are those of the global batch. Every process logs at the same steps."""
        if self.args.world_size == 1:
            return dict(self._term_sums), self._term_steps
        names = [None] * self.args.world_size
        torch.distributed.all_gather_object(names, sorted(self._term_sums))
        names = sorted(set().union(*names))  # a process that skipped a batch may hold one more name
        totals = torch.tensor([self._term_sums.get(n, 0.0) for n in names] + [self._term_steps], dtype=torch.float64)
        totals = self.accelerator.reduce(totals.to(self.args.device), reduction="sum").cpu().tolist()
        return dict(zip(names, totals[:-1])), int(totals[-1])

    # --- non-finite batches: no optimizer step without a finite batch ----------------------------
    def create_optimizer(self, model=None):
        """Trainer's optimizer, wrapped so that its steps follow `_should_step`."""
        optimizer = super().create_optimizer(model)
        if not isinstance(optimizer, GuardedOptimizer):
            self.optimizer = GuardedOptimizer(optimizer, self._should_step)
        return self.optimizer

    def _should_step(self) -> bool:
        """No step when no micro-batch since the last step had a finite loss (on_nonfinite: skip), or
        when a gradient is not finite (stop: raise; skip: count). Under DDP the decision is shared by
        all processes, so their weights stay equal."""
        finite_batches, finite_grads = self._finite_batches, grads_finite(self.optimizer)
        self._finite_batches = 0
        self.optimizer_steps += 1
        flags = torch.tensor([finite_batches, 0 if finite_grads else 1], dtype=torch.float64)
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            device = self.args.device if torch.distributed.get_backend() == "nccl" else "cpu"
            flags = flags.to(device)
            torch.distributed.all_reduce(flags)
            flags = flags.cpu()
        if flags[1] > 0 and flags[0] > 0:
            where = f"step {self.state.global_step + 1}: a gradient is NaN or Inf though every loss term was finite"
            if self.cl2cm_args.on_nonfinite == "stop":
                raise NonFiniteLossError(f"non-finite gradient at {where}; set on_nonfinite: skip to skip such steps")
            self.nonfinite_terms["gradient"] += 1
        if flags[0] == 0 or flags[1] > 0:
            self.skipped_steps += 1
            self._term_sums["skipped_steps"] += 1
            return False
        return True

    def check_skipped_steps(self) -> None:
        """Raise `TooManySkippedStepsError` when this stage skipped more than `max_skipped_fraction` of
        the optimizer steps it ran, naming each non-finite loss term and the settings that govern it.
        Called at the end of the stage (`fit`, run.py), before anything of it is saved."""
        limit = self.cl2cm_args.max_skipped_fraction
        if not self.optimizer_steps or self.skipped_steps <= limit * self.optimizer_steps:
            return
        terms = "; ".join(
            (f"gradients non-finite in {count} step(s)" if name == "gradient" else f"loss term {name} non-finite in {count} batch(es)")
            + f", governed by {TERM_SETTINGS.get(name, 'its loss settings')}"
            for name, count in self.nonfinite_terms.most_common()
        )
        raise TooManySkippedStepsError(
            f"{self.stage_name}: {self.skipped_steps} of {self.optimizer_steps} optimizer steps "
            f"({self.skipped_steps / self.optimizer_steps:.0%}) were skipped (on_nonfinite: skip), more than "
            f"max_skipped_fraction: {limit}. {terms or 'non-finite values'} (or learning_rate, if the weights diverged). "
            "Nothing of this stage is published."
        )

    def get_eval_dataloader(self, eval_dataset=None):
        """Nothing for Trainer's own loop to run when the evaluator scores retrieval from its own data."""
        if self.evaluator is not None:
            return DataLoader([])
        return super().get_eval_dataloader(eval_dataset)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"):
        """Trainer's loop plus the evaluator's retrieval metrics (validation, target languages), hooked in
        as sentence-transformers does, so Trainer logs them, reports them to callbacks and picks the best
        checkpoint by `eval_sumr`."""
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.evaluator is None:
            return output
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in flat_metrics(self.evaluator(model)).items()})
        model.train(was_training)
        return output

class CrossLingualTrainer(_CL2CMTrainer):
    """Stage 1: `contrastive(source, target) + lambda_word * sinkhorn_ot_loss(tokens)`."""

    stage_name = "stage 1 (cross-lingual)"

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.cl2cm_args
        outputs = model(
            source_input_ids=inputs["source_input_ids"],
            source_attention_mask=inputs["source_attention_mask"],
            target_input_ids=inputs["target_input_ids"],
            target_attention_mask=inputs["target_attention_mask"],
        )
        terms = {"sentence": (1.0, self.contrastive(outputs.source_embeds, outputs.target_embeds, outputs.scale))}
        if args.lambda_word:
            word = sinkhorn_ot_loss(
                outputs.source_token_embeds,
                outputs.source_token_mask,
                outputs.target_token_embeds,
                outputs.target_token_mask,
                epsilon=args.ot_epsilon,
                n_iter=args.ot_iterations,
            )
            terms["word"] = (args.lambda_word, word)
        loss = self.combine(model, terms)
        return (loss, outputs) if return_outputs else loss


class CrossModalTrainer(_CL2CMTrainer):
    """Stage 2: `contrastive(visual, source) + lambda_mt * contrastive(visual, MT)
    + lambda_kt * relational_distillation(MT vs visual | teacher: MT vs source)`.

    The teacher is the frozen stage-1 model: on the accelerator's device, in eval mode, without
    gradients, outside the optimizer and outside DDP. With precomputed teacher embeddings the batch
    carries them (`teacher_source_embeds`, `teacher_target_embeds`) and `teacher_scale` is fixed. A
    teacher with a tokenizer of its own reads ``teacher_source_*``/``teacher_target_*`` token ids.

    Options of the distillation term (`CL2CMArguments`): teacher distributions recalibrated to an
    entropy (``kt_teacher_entropy``), relations over a queue of earlier batches' keys as well
    (``kt_queue_size``, a `RelationQueue`), batches of teacher-neighbour groups
    (``kt_neighbour_group_size``, a `TeacherNeighbourSampler`).
    """

    stage_name = "stage 2 (cross-modal)"

    def __init__(self, *args, teacher_model=None, teacher_scale: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher_model = teacher_model
        self.teacher_scale = teacher_scale
        if teacher_model is not None:
            teacher_model.requires_grad_(False)
            teacher_model.eval()
            self.teacher_model = teacher_model.to(self.args.device)
        if self.cl2cm_args.lambda_kt and teacher_model is None and teacher_scale is None:
            raise CL2CMError("lambda_kt > 0 needs a teacher: a stage-1 model or precomputed teacher embeddings")
        queue_size = self.cl2cm_args.kt_queue_size if self.cl2cm_args.lambda_kt else 0
        self.relation_queue = RelationQueue(queue_size) if queue_size else None
        if self.relation_queue is not None:
            self.training_states.append(self.relation_queue)

    def _get_train_sampler(self, train_dataset=None):
        group_size = self.cl2cm_args.kt_neighbour_group_size
        if not group_size:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        return teacher_neighbour_sampler(dataset, group_size, self._train_batch_size, self.args.seed)

    @torch.no_grad()
    def teacher_embeddings(self, inputs):
        if "teacher_source_embeds" in inputs:
            return inputs["teacher_source_embeds"], inputs["teacher_target_embeds"], self.teacher_scale
        teacher = self.teacher_model
        own = "teacher_" if "teacher_source_input_ids" in inputs else ""  # the teacher's own token ids
        source = teacher.get_text_features(inputs[f"{own}source_input_ids"], inputs[f"{own}source_attention_mask"], language="source").pooler_output
        target = teacher.get_text_features(inputs[f"{own}target_input_ids"], inputs[f"{own}target_attention_mask"], language="target").pooler_output
        return source, target, teacher.scale()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.cl2cm_args
        use_target = bool(args.lambda_mt or args.lambda_kt)
        outputs = model(
            input_ids=inputs["source_input_ids"],
            attention_mask=inputs["source_attention_mask"],
            visual_features=inputs.get("visual_features"),
            visual_mask=inputs.get("visual_mask"),
            pixel_values=inputs.get("pixel_values"),
            target_input_ids=inputs["target_input_ids"] if use_target else None,
            target_attention_mask=inputs["target_attention_mask"] if use_target else None,
        )
        visual, scale = outputs.visual_embeds, outputs.scale
        terms = {"source": (1.0, self.contrastive(visual, outputs.text_embeds, scale))}
        if args.lambda_mt:
            terms["mt"] = (args.lambda_mt, self.contrastive(visual, outputs.target_text_embeds, scale))
        if args.lambda_kt:
            teacher_source, teacher_target, teacher_scale = self.teacher_embeddings(inputs)
            teacher_source = teacher_source.to(visual.dtype)
            queue_visual, queue_teacher = self.relation_queue.keys() if self.relation_queue is not None else (None, None)
            kt = relational_distillation(
                outputs.target_text_embeds,
                visual,
                teacher_target.to(visual.dtype),
                teacher_source,
                student_scale=teacher_scale if args.kt_student_scale == "teacher" else scale,
                teacher_scale=teacher_scale,
                temperature=args.kt_temperature,
                teacher_entropy=args.kt_teacher_entropy,
                queue_student_k=queue_visual,
                queue_teacher_k=queue_teacher,
            )
            terms["kt"] = (args.lambda_kt, kt)
        loss = self.combine(model, terms)
        if self.relation_queue is not None and model.training and self.last_batch_finite:
            self.relation_queue.push(visual, teacher_source)
        return (loss, outputs) if return_outputs else loss
