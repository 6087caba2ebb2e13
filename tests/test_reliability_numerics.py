"""Numerics: NaN/Inf inputs and losses stop training naming the step and the loss term, or skip
the batch (``on_nonfinite: skip``, counted in the logs as ``skipped_batches``/``skipped_steps``);
OT on all-padding rows, single-token captions and zero-length videos stays finite; bf16 autocast on
CPU gives finite losses and gradients for both stages."""

import numpy as np
import pytest
import torch
from conftest import build_wordpiece_tokenizer, cross_lingual_config, features_config
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reliability_outputs import pair_rows, tiny_trainer
from transformers import TrainingArguments

import cl2cm_hf.training.trainers as trainers_module
from cl2cm_hf import CL2CMCrossLingualModel, CL2CMCrossModalModel
from cl2cm_hf.data import PairCollator, VisualFeatureStore
from cl2cm_hf.losses import info_nce, relational_distillation, sinkhorn_ot_loss
from cl2cm_hf.training.method_arguments import CL2CMArguments
from cl2cm_hf.training.nonfinite import NonFiniteLossError
from cl2cm_hf.training.trainers import CrossLingualTrainer, CrossModalTrainer

pytestmark = pytest.mark.slow  # trains, starts processes or a browser: not in `make test-fast`

SMALL = settings(max_examples=40, deadline=None)


def nan_word_loss_at(calls: set[int]):
    """A sinkhorn_ot_loss that returns NaN on the given (1-based) calls."""
    real, count = sinkhorn_ot_loss, [0]

    def loss(*args, **kwargs):
        count[0] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if count[0] in calls else value

    return loss


def params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --- NaN/Inf losses in training: stop or skip ---------------------------------------------------
def test_nan_loss_stops_naming_step_and_term(tmp_path, monkeypatch):
    monkeypatch.setattr(trainers_module, "sinkhorn_ot_loss", nan_word_loss_at({3}))
    trainer = tiny_trainer(tmp_path, max_steps=5, save_strategy="no")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3, loss term\(s\) word; set on_nonfinite: skip"):
        trainer.train()


def test_nan_loss_skip_mode_skips_batch_and_step_and_counts_them(tmp_path, monkeypatch):
    monkeypatch.setattr(trainers_module, "sinkhorn_ot_loss", nan_word_loss_at({2, 4}))
    trainer = tiny_trainer(tmp_path, max_steps=5, save_strategy="no", cl2cm=CL2CMArguments(ot_iterations=5, on_nonfinite="skip"))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert sum(entry.get("skipped_batches", 0) for entry in logged) == 2 == trainer.skipped_batches
    assert sum(entry.get("skipped_steps", 0) for entry in logged) == 2 == trainer.skipped_steps
    assert all(np.isfinite(entry["loss"]) for entry in logged)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_all_batches_nonfinite_leave_weights_untouched(tmp_path, monkeypatch):
    """A skipped batch is no optimizer step at all: with momentum and weight decay a zero-gradient
    step would still move the weights."""
    monkeypatch.setattr(trainers_module, "sinkhorn_ot_loss", nan_word_loss_at(set(range(1, 100))))
    trainer = tiny_trainer(tmp_path, max_steps=3, save_strategy="no", weight_decay=0.1,
                           cl2cm=CL2CMArguments(ot_iterations=5, on_nonfinite="skip"))
    before = params(trainer.model)
    trainer.train()
    after = params(trainer.model)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert trainer.skipped_batches == 3 and trainer.skipped_steps == 3


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_gradient_with_finite_loss(tmp_path, mode):
    trainer = tiny_trainer(tmp_path, max_steps=2, save_strategy="no", max_grad_norm=0.0,
                           cl2cm=CL2CMArguments(ot_iterations=5, on_nonfinite=mode))
    trainer.model.text_model.projection.weight.register_hook(lambda grad: grad * float("inf"))
    before = params(trainer.model)
    if mode == "stop":
        with pytest.raises(NonFiniteLossError, match="non-finite gradient at step 1"):
            trainer.train()
        return
    trainer.train()
    assert trainer.skipped_steps == 2
    assert all(torch.equal(before[name], p) for name, p in params(trainer.model).items())


# --- NaN/Inf inputs: named loss terms ----------------------------------------------------------
@pytest.fixture(scope="module")
def cross_modal_parts():
    tokenizer = build_wordpiece_tokenizer()
    torch.manual_seed(0)
    store = VisualFeatureStore.from_arrays([f"v{i}" for i in range(32)], torch.randn(32, 48))
    rows = pair_rows(8)
    batch = PairCollator(tokenizer, store, 16)(rows)
    return tokenizer, store, rows, batch


def cross_modal_trainer(tmp_path, **cl2cm):
    torch.manual_seed(0)
    model = CL2CMCrossModalModel(features_config())
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False, label_names=[])
    return CrossModalTrainer(model=model, args=args, cl2cm_args=CL2CMArguments(**cl2cm), teacher_scale=20.0)


def test_nonfinite_teacher_embeddings_stop_naming_the_kt_term(tmp_path, cross_modal_parts):
    _, _, _, batch = cross_modal_parts
    trainer = cross_modal_trainer(tmp_path)
    teacher = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    bad = teacher.clone()
    bad[3, 0] = float("inf")
    inputs = dict(batch, teacher_source_embeds=teacher, teacher_target_embeds=bad)
    with pytest.raises(NonFiniteLossError, match=r"step 1, loss term\(s\) kt;"):
        trainer.compute_loss(trainer.model, inputs)
    finite = trainer.compute_loss(trainer.model, dict(batch, teacher_source_embeds=teacher, teacher_target_embeds=teacher))
    assert torch.isfinite(finite)


def test_nan_visual_features_stop_naming_every_term_they_reach(tmp_path, cross_modal_parts):
    _, _, _, batch = cross_modal_parts
    trainer = cross_modal_trainer(tmp_path, lambda_kt=0.0)
    features = batch["visual_features"].clone()
    features[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"loss term\(s\) source, mt;"):
        trainer.compute_loss(trainer.model, dict(batch, visual_features=features))


def test_nan_feature_row_rejected_when_the_store_is_loaded(tmp_path):
    array = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    array[2, 1] = np.nan
    VisualFeatureStore.from_arrays(list("abcd"), np.zeros((4, 3), dtype=np.float32)).save(tmp_path / "s")
    np.save(tmp_path / "f.npy", array)
    with pytest.raises(ValueError, match=r"visual_id 'c' \(row 2\) contain NaN or Inf"):
        VisualFeatureStore.from_npy(tmp_path / "f.npy", list("abcd"), on_bad_row="error")  # as trainer/run_data.py loads


# --- OT and models on degenerate inputs ---------------------------------------------------------
@SMALL
@given(
    lengths_x=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    data=st.data(),
    epsilon=st.sampled_from([0.001, 0.05, 0.1, 1.0]),
    zero_vectors=st.booleans(),
)
def test_ot_loss_and_gradient_finite_on_padding_rows_and_single_tokens(lengths_x, data, epsilon, zero_vectors):
    batch = len(lengths_x)
    lengths_y = data.draw(st.lists(st.integers(0, 5), min_size=batch, max_size=batch))
    n, m = max(max(lengths_x), 1), max(max(lengths_y), 1)
    x = torch.randn(batch, n, 8, requires_grad=True)
    y = torch.randn(batch, m, 8, requires_grad=True)
    if zero_vectors:  # e.g. padding states projected to exactly zero
        x.data[:, 0] = 0.0
    x_mask = (torch.arange(n)[None] < torch.tensor(lengths_x)[:, None]).long()
    y_mask = (torch.arange(m)[None] < torch.tensor(lengths_y)[:, None]).long()
    loss = sinkhorn_ot_loss(x, x_mask, y, y_mask, epsilon=epsilon, n_iter=20)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


@pytest.mark.parametrize("share", [True, False])
def test_cross_lingual_model_finite_on_all_padding_and_single_token_rows(share):
    torch.manual_seed(0)
    model = CL2CMCrossLingualModel(cross_lingual_config(share_encoders=share))
    ids = torch.randint(5, 100, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    out = model(source_input_ids=ids, target_input_ids=ids.flip(0), source_attention_mask=mask, target_attention_mask=mask.flip(0))
    loss = info_nce(out.source_embeds, out.target_embeds, 1 / out.scale) + sinkhorn_ot_loss(
        out.source_token_embeds, out.source_token_mask, out.target_token_embeds, out.target_token_mask
    )
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("num_layers", [0, 1])
def test_cross_modal_model_finite_on_zero_length_videos(num_layers):
    torch.manual_seed(0)
    model = CL2CMCrossModalModel(features_config(visual_num_layers=num_layers))
    frames = torch.randn(3, 4, 48)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    ids = torch.randint(5, 100, (3, 5))
    out = model(input_ids=ids, visual_features=frames, visual_mask=mask, target_input_ids=ids)
    loss = info_nce(out.visual_embeds, out.text_embeds, 1 / out.scale) + relational_distillation(
        out.target_text_embeds, out.visual_embeds, out.text_embeds.detach(), out.text_embeds.detach(), out.scale, 20.0
    )
    assert torch.isfinite(out.visual_embeds).all() and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- bf16 autocast on CPU: both stages ---------------------------------------------------------
def _autocast_loss_and_grads(trainer, inputs):
    trainer.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    return loss, grads


def test_bf16_autocast_cross_lingual_stage_is_finite(tmp_path):
    tokenizer = build_wordpiece_tokenizer()
    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", remove_unused_columns=False, label_names=[])
    trainer = CrossLingualTrainer(model=CL2CMCrossLingualModel(cross_lingual_config()), args=args, cl2cm_args=CL2CMArguments(ot_iterations=10))
    rows = pair_rows(8)
    rows[0]["target_text"] = "a"  # a single-token caption
    loss, grads = _autocast_loss_and_grads(trainer, PairCollator(tokenizer, None, 16)(rows))
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)


def test_bf16_autocast_cross_modal_stage_is_finite(tmp_path, cross_modal_parts):
    _, _, _, batch = cross_modal_parts
    trainer = cross_modal_trainer(tmp_path)
    teacher = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    loss, grads = _autocast_loss_and_grads(trainer, dict(batch, teacher_source_embeds=teacher, teacher_target_embeds=teacher.flip(0)))
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
