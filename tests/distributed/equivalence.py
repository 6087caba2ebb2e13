"""Distributed equivalence cases: N processes x batch B against one process on the global batch N*B.

Used two ways by ``tests/test_distributed.py``:

* imported, to build the fixture (tiny float64 models, a global batch) and to compute the
  single-process reference (no process group: every gather is the identity);
* run under ``torchrun --nproc_per_node 2 tests/distributed/equivalence.py FIXTURE OUT_DIR``: each rank
  takes rows ``rank*B:(rank+1)*B`` of the global batch, runs the same case through the real trainer
  code (``Trainer.compute_loss`` of `CrossLingualTrainer` / `CrossModalTrainer` on the model wrapped
  in DDP by the trainer's own accelerator), backpropagates, and writes ``rank{r}.pt``: the global
  loss (mean of the ranks' local losses) and every parameter's ``.grad`` after DDP's averaging.

For the loss functions alone the inputs are leaf tensors: a sharded tensor's ``.grad`` on its
owner is the sum over ranks of each rank's local-loss gradient (gather-with-grad sends each rank's
gradient back to the owner), so ``grad / world`` is the gradient of the global mean loss; a
replicated tensor (a learned scale) is all-reduced and divided by the world size, as DDP does.

Dropout is 0 everywhere (text hidden/attention, visual), so each case is deterministic.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

B = 4  # rows per process
WORLD = 2
VOCAB = 300
LENGTH = 9
FEATURE_DIM = 12
PROJECTION_DIM = 8

# name -> (stage, CL2CMArguments overrides, batch carries precomputed teacher embeddings)
MODEL_CASES = {
    "cl_infonce_ot": ("cl", {"loss": "infonce", "lambda_word": 0.1, "ot_epsilon": 0.1, "ot_iterations": 30}, False),
    "cl_triplet_ot": ("cl", {"loss": "triplet", "lambda_word": 0.5, "ot_epsilon": 0.05, "ot_iterations": 30}, False),
    "cm_infonce_live_teacher": ("cm", {"loss": "infonce", "lambda_mt": 1.0, "lambda_kt": 1.0, "kt_temperature": 2.0}, False),
    "cm_infonce_precomputed_teacher": ("cm", {"loss": "infonce", "lambda_mt": 0.5, "lambda_kt": 1.0}, True),
    "cm_triplet_live_teacher": ("cm", {"loss": "triplet", "lambda_mt": 1.0, "lambda_kt": 0.5}, False),
}
LOSS_CASES = ("info_nce", "vse_triplet", "relational_distillation", "relational_distillation_options", "sinkhorn_ot_loss")
TEACHER_SCALE = 17.0  # the fixed scale that comes with precomputed teacher embeddings


def _configs():
    from transformers import BertConfig

    from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossModalConfig

    text = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    ).to_dict()
    cl = CL2CMCrossLingualConfig(text_config=text, projection_dim=PROJECTION_DIM, pooling="mean")
    cm = CL2CMCrossModalConfig(
        text_config=text, projection_dim=PROJECTION_DIM, visual_encoder_type="features", visual_feature_dim=FEATURE_DIM,
        visual_hidden_size=16, visual_num_layers=1, visual_num_heads=2, visual_max_frames=4, visual_dropout=0.0,
    )
    return cl, cm


def _ragged_ids(n: int, g: torch.Generator):
    ids = torch.randint(5, VOCAB, (n, LENGTH), generator=g)
    lengths = torch.randint(2, LENGTH + 1, (n,), generator=g)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return ids * mask, mask


def build_fixture(seed: int = 0) -> dict:
    """Model weights (random, float64), a global batch of WORLD * B rows, loss-function inputs."""
    from cl2cm_hf import CL2CMCrossLingualModel, CL2CMCrossModalModel

    torch.manual_seed(seed)
    cl_config, cm_config = _configs()
    cl_state = CL2CMCrossLingualModel(cl_config).double().state_dict()
    cm_state = CL2CMCrossModalModel(cm_config).double().state_dict()
    g = torch.Generator().manual_seed(seed + 1)
    n = WORLD * B
    batch = {}
    for side in ("source", "target"):
        batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"] = _ragged_ids(n, g)
    batch["visual_features"] = torch.randn(n, 3, FEATURE_DIM, generator=g, dtype=torch.float64)
    batch["visual_mask"] = (torch.arange(3)[None] < torch.randint(1, 4, (n,), generator=g)[:, None]).long()
    for name in ("teacher_source_embeds", "teacher_target_embeds"):
        batch[name] = F.normalize(torch.randn(n, PROJECTION_DIM, generator=g, dtype=torch.float64), dim=-1)
    tokens_x = torch.randn(n, 7, 5, generator=g, dtype=torch.float64)
    tokens_y = torch.randn(n, 6, 5, generator=g, dtype=torch.float64)
    x_mask = (torch.arange(7)[None] < torch.randint(1, 8, (n,), generator=g)[:, None]).long()
    y_mask = (torch.arange(6)[None] < torch.randint(1, 7, (n,), generator=g)[:, None]).long()
    losses = {
        "a": F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1),
        "b": F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1),
        "tq": F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1),
        "tk": F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=-1),
        "log_scale": torch.tensor(math.log(12.0), dtype=torch.float64),
        "x": tokens_x, "x_mask": x_mask, "y": tokens_y, "y_mask": y_mask,
    }
    # A relation queue: the same keys on every process (`RelationQueue` enqueues gathered batches).
    queue = {name: F.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=-1) for name in ("student_k", "teacher_k")}
    return {"cl_config": cl_config.to_dict(), "cm_config": cm_config.to_dict(), "cl_state": cl_state,
            "cm_state": cm_state, "batch": batch, "losses": losses, "queue": queue}


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    per = x.shape[0] // world
    return x[rank * per : (rank + 1) * per].clone()


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    _, world = _world()
    x = x.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(x)
    return x / world


def _models(fixture):
    from cl2cm_hf import CL2CMCrossLingualConfig, CL2CMCrossLingualModel, CL2CMCrossModalConfig, CL2CMCrossModalModel

    cl = CL2CMCrossLingualModel(CL2CMCrossLingualConfig.from_dict(fixture["cl_config"])).double()
    cl.load_state_dict(fixture["cl_state"])
    cm = CL2CMCrossModalModel(CL2CMCrossModalConfig.from_dict(fixture["cm_config"])).double()
    cm.load_state_dict(fixture["cm_state"])
    return cl, cm


def run_model_case(name: str, fixture: dict, work_dir: str) -> dict:
    """Loss and per-parameter gradients of one trainer case on this process's shard."""
    from transformers import TrainingArguments

    from cl2cm_hf.training.method_arguments import CL2CMArguments
    from cl2cm_hf.training.trainers import CrossLingualTrainer, CrossModalTrainer

    rank, world = _world()
    stage, overrides, precomputed = MODEL_CASES[name]
    cl, cm = _models(fixture)
    args = TrainingArguments(output_dir=work_dir, use_cpu=True, report_to="none", seed=0)
    cl2cm_args = CL2CMArguments(stage=stage, **overrides)
    inputs = {k: _shard(v, rank, world) for k, v in fixture["batch"].items()}
    if stage == "cl":
        model = cl
        trainer = CrossLingualTrainer(model=model, args=args, cl2cm_args=cl2cm_args)
        inputs = {k: v for k, v in inputs.items() if k.startswith(("source_", "target_"))}
    else:
        model = cm
        if precomputed:
            trainer = CrossModalTrainer(model=model, args=args, cl2cm_args=cl2cm_args, teacher_scale=TEACHER_SCALE)
        else:
            trainer = CrossModalTrainer(model=model, args=args, cl2cm_args=cl2cm_args, teacher_model=cl)
            inputs = {k: v for k, v in inputs.items() if not k.startswith("teacher_")}
    model.train()
    wrapped = trainer.accelerator.prepare_model(model)  # DDP with the Trainer's settings when world > 1
    assert (type(wrapped).__name__ == "DistributedDataParallel") == (world > 1), type(wrapped)
    loss = trainer.compute_loss(wrapped, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    no_grad = sorted(n for n, p in model.named_parameters() if p.requires_grad and p.grad is None)
    return {"loss": _mean_over_ranks(loss), "grads": grads, "no_grad": no_grad}


def run_loss_case(name: str, fixture: dict) -> dict:
    """Loss and gradients of one loss function; sharded-input gradients are returned for this
    process's rows only (as gradients of the global mean loss)."""
    from cl2cm_hf.losses import info_nce, relational_distillation, sinkhorn_ot_loss, vse_triplet

    rank, world = _world()
    data = fixture["losses"]
    sharded = {k: _shard(v, rank, world).requires_grad_(v.is_floating_point()) for k, v in data.items() if k != "log_scale"}
    log_scale = data["log_scale"].clone().requires_grad_(True)
    if name == "info_nce":
        loss = info_nce(sharded["a"], sharded["b"], 1.0 / log_scale.exp())
    elif name == "vse_triplet":
        loss = vse_triplet(sharded["a"], sharded["b"], margin=0.3)
        loss = loss + 0.0 * log_scale  # the scale is unused; keep it in the graph
    elif name == "relational_distillation":
        loss = relational_distillation(
            sharded["a"], sharded["b"], sharded["tq"], sharded["tk"], log_scale.exp(), 20.0, temperature=1.5
        )
    elif name == "relational_distillation_options":
        queue = fixture["queue"]
        loss = relational_distillation(
            sharded["a"], sharded["b"], sharded["tq"], sharded["tk"], log_scale.exp(), 20.0, temperature=0.5,
            teacher_entropy=1.0, queue_student_k=queue["student_k"], queue_teacher_k=queue["teacher_k"],
        )
    elif name == "sinkhorn_ot_loss":
        loss = sinkhorn_ot_loss(sharded["x"], sharded["x_mask"], sharded["y"], sharded["y_mask"], epsilon=0.05, n_iter=40)
        loss = loss + 0.0 * log_scale
    else:
        raise ValueError(name)
    loss.backward()
    grads = {k: v.grad / world for k, v in sharded.items() if v.grad is not None}
    grads["log_scale"] = _mean_over_ranks(log_scale.grad)
    return {"loss": _mean_over_ranks(loss), "grads": grads}


def run_all(fixture: dict, work_dir: str) -> dict:
    out = {f"model/{name}": run_model_case(name, fixture, work_dir) for name in MODEL_CASES}
    out.update({f"loss/{name}": run_loss_case(name, fixture) for name in LOSS_CASES})
    return out


def main(fixture_path: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank, world = _world()
    assert world == WORLD, f"run with --nproc_per_node {WORLD}, got world size {world}"
    torch.set_num_threads(1)
    fixture = torch.load(fixture_path, weights_only=True)
    with tempfile.TemporaryDirectory() as work_dir:
        results = run_all(fixture, work_dir)
    results["world"] = world
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(*sys.argv[1:3])
