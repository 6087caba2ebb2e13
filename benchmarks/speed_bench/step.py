"""Section `step`: a stage-2 training step of CL2CM (live or precomputed teacher) against a plain
dual encoder, same towers, same batch. `stage2_case` and `stage2_step` also serve `neighbour`."""

from __future__ import annotations

import copy

import torch

from benchmarks.provenance import REPO
from benchmarks.speed_bench.timing import interleaved, med, median_ratio, row

STEP_SIZES = {
    # name: (vocab, hidden, layers, heads, projection, feature_dim, visual_hidden, batch, max_tokens)
    "demo recipe towers (BERT 96x2, batch 64)": (1500, 96, 2, 4, 64, 64, 128, 64, 40),
    "MiniLM-size towers (BERT 384x6, batch 32)": (30522, 384, 6, 12, 256, 2048, 512, 32, 32),
}
STEP_REPEATS = {"demo recipe towers (BERT 96x2, batch 64)": 9, "MiniLM-size towers (BERT 384x6, batch 32)": 5}


def stage2_case(name: str):
    """Random towers of size `name` (STEP_SIZES) and one batch: (teacher, student, inputs, precomputed
    teacher embeddings)."""
    from transformers import BertConfig

    from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalConfig, CL2CMCrossModalModel

    vocab, hidden, layers, heads, proj, feat, vhidden, batch, max_tokens = STEP_SIZES[name]
    torch.manual_seed(0)
    text = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=4 * hidden, max_position_embeddings=max(64, max_tokens + 2)).to_dict()
    teacher = CL2CMCrossLingualModel(CL2CMCrossLingualConfig(text_config=text, projection_dim=proj))
    student = CL2CMCrossModalModel(CL2CMCrossModalConfig(
        text_config=text, projection_dim=proj, visual_feature_dim=feat, visual_hidden_size=vhidden))
    g = torch.Generator().manual_seed(0)
    inputs = {}
    for side in ("source", "target"):
        lengths = torch.randint(max_tokens // 3, max_tokens + 1, (batch,), generator=g)
        width = int(lengths.max())
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        inputs[f"{side}_input_ids"] = torch.randint(5, vocab, (batch, width), generator=g) * mask
        inputs[f"{side}_attention_mask"] = mask
    inputs["visual_features"] = torch.randn(batch, feat, generator=g)
    with torch.no_grad():
        teacher.eval()
        precomputed = {
            "teacher_source_embeds": teacher.get_text_features(inputs["source_input_ids"], inputs["source_attention_mask"]).pooler_output,
            "teacher_target_embeds": teacher.get_text_features(inputs["target_input_ids"], inputs["target_attention_mask"],
                                                               language="target"),
        }
    return teacher, student, inputs, precomputed


def stage2_step(student, lambda_kt, teacher_model=None, teacher_scale=None):
    """One CrossModalTrainer step on a copy of `student`: loss, backward, AdamW step."""
    from transformers import TrainingArguments

    from cl2cm_hf.training.method_arguments import CL2CMArguments
    from cl2cm_hf.training.trainers import CrossModalTrainer

    model = copy.deepcopy(student).train()
    targs = TrainingArguments(output_dir=str(REPO / "runs" / ".speed-bench"), use_cpu=True, report_to="none")
    trainer = CrossModalTrainer(
        model=model, args=targs, cl2cm_args=CL2CMArguments(stage="cm", lambda_kt=lambda_kt),
        teacher_model=teacher_model, teacher_scale=teacher_scale,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(batch):
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_step(args) -> None:
    sizes = dict(list(STEP_SIZES.items())[:1]) if args.quick else STEP_SIZES
    for name in sizes:
        teacher, student, inputs, precomputed = stage2_case(name)
        plain = stage2_step(student, 0.0)
        live = stage2_step(student, 1.0, teacher_model=copy.deepcopy(teacher))
        pre = stage2_step(student, 1.0, teacher_scale=float(teacher.scale().detach()))
        with_teacher = {**inputs, **precomputed}
        times = interleaved(
            {"plain": lambda: plain(inputs), "live": lambda: live(inputs), "precomputed": lambda: pre(with_teacher)},
            repeats=3 if args.quick else max(args.repeats, STEP_REPEATS[name]), warmup=1,
        )
        live_ratio = median_ratio(times["live"], times["plain"])
        pre_ratio = median_ratio(times["precomputed"], times["plain"])
        plain_ms = f"plain {med(times['plain']) * 1e3:.0f} ms"
        row("step", f"{name}: CL2CM, live teacher / plain", f"{med(times['live']) * 1e3:.0f} ms", plain_ms, live_ratio,
            "<= 1.35x", live_ratio <= 1.35, args.threads)
        row("step", f"{name}: CL2CM, precomputed teacher / plain", f"{med(times['precomputed']) * 1e3:.0f} ms", plain_ms,
            pre_ratio, "<= 1.05x", pre_ratio <= 1.05, args.threads)
