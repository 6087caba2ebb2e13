"""Data-parallel training equals one process on the global batch (CPU, gloo, torchrun).

`accelerate launch --cpu --num_processes 2` silently runs ONE process, so the two processes come
from `torchrun --nproc_per_node 2` (gloo), each on a free port.

1. Losses and gradients, float64, dropout off: for both stages (real towers, the trainers'
   `compute_loss`, DDP from the trainer's accelerator), and for each loss function alone, 2
   processes x B rows give the same loss and the same gradient of every parameter as 1 process on
   the 2B rows (within 1e-6; in practice ~1e-14). This proves the gather-with-gradient of
   contrastive negatives and of the teacher/student similarity structure.
2. A short training run of the demo recipe (both stages, dropout off): 2 processes with per-device
   batch B end with the same weights as 1 process with per-device batch 2B. Accelerate shards the
   seeded sampler's batches of B round-robin (rank r takes batch 2k + r at step k), so step k of
   both runs sees the same 2B examples.
"""

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "distributed" / "equivalence.py"
TOL = 1e-6

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo"
)]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args,
    ]


def subprocess_env(tmp: Path) -> dict:
    """The environment of a torchrun child: offline, one thread, this checkout first; temporary files
    (torchrun's ``torchelastic_*`` folders) under the test's `tmp`, not left in the system's."""
    return {
        **os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "TMPDIR": str(tmp),
    }


def _helper():
    spec = importlib.util.spec_from_file_location("cl2cm_distributed_equivalence", HELPER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    """(single-process reference, [rank 0 results, rank 1 results], helper module)."""
    helper = _helper()
    folder = tmp_path_factory.mktemp("equivalence")
    fixture = helper.build_fixture(seed=0)
    torch.save(fixture, folder / "fixture.pt")
    proc = subprocess.Popen(
        torchrun(helper.WORLD, str(HELPER), str(folder / "fixture.pt"), str(folder)), env=subprocess_env(folder),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        reference = helper.run_all(fixture, str(folder / "single"))  # no process group: world size 1
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-5000:]
    ranks = [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(helper.WORLD)]
    assert all(r["world"] == helper.WORLD for r in ranks)
    return reference, ranks, helper


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


@pytest.mark.parametrize(
    "case",
    ["cl_infonce_ot", "cl_triplet_ot", "cm_infonce_live_teacher", "cm_infonce_precomputed_teacher", "cm_triplet_live_teacher"],
)
def test_ddp_two_processes_equal_one_process_on_global_batch(equivalence, case):
    reference, ranks, helper = equivalence
    assert case in helper.MODEL_CASES
    want = reference[f"model/{case}"]
    assert want["loss"].dtype == torch.float64 and float(want["loss"]) > 0
    for rank, results in enumerate(ranks):
        got = results[f"model/{case}"]
        assert abs(float(got["loss"]) - float(want["loss"])) < TOL, (rank, float(got["loss"]), float(want["loss"]))
        assert got["no_grad"] == want["no_grad"]
        assert got["grads"].keys() == want["grads"].keys()
        assert len(want["grads"]) > 20  # every parameter of the towers, not a handful
        for name, grad in want["grads"].items():
            diff = _max_diff(got["grads"][name], grad)
            assert diff < TOL, f"rank {rank}: {name} grad differs by {diff:.3g} (scale {float(grad.abs().max()):.3g})"
    # A gradient that is zero everywhere would prove nothing: the towers and the scale all learn.
    grads = want["grads"]
    assert any("visual_model" in n for n in grads) == case.startswith("cm")
    assert all(float(g.abs().max()) > 0 for n, g in grads.items() if "word_embeddings" not in n and "bias" not in n)


@pytest.mark.parametrize("name", ["info_nce", "vse_triplet", "relational_distillation", "relational_distillation_options", "sinkhorn_ot_loss"])
def test_loss_functions_two_processes_equal_one_process(equivalence, name):
    reference, ranks, helper = equivalence
    want = reference[f"loss/{name}"]
    for rank, results in enumerate(ranks):
        got = results[f"loss/{name}"]
        assert abs(float(got["loss"]) - float(want["loss"])) < TOL, (rank, float(got["loss"]), float(want["loss"]))
        for key, grad in got["grads"].items():
            expected = want["grads"][key]
            if key != "log_scale":  # sharded input: this rank's rows of the global gradient
                expected = helper._shard(expected, rank, helper.WORLD)
            diff = _max_diff(grad, expected)
            assert diff < TOL, f"rank {rank}: d{name}/d{key} differs by {diff:.3g}"
            assert float(expected.abs().max()) > 0 or key == "log_scale"
    if name.startswith(("info_nce", "relational_distillation")):
        assert float(want["grads"]["log_scale"].abs()) > 0


# ---------------------------------------------------------------------------------------------
# A short training run: 2 processes x B == 1 process x 2B
# ---------------------------------------------------------------------------------------------

B = 8
TRAIN = [
    "--demo_items", "80", "--demo_validation_items", "20", "--demo_test_items", "20",
    "--text_hidden_size", "32", "--text_num_heads", "2", "--projection_dim", "16", "--visual_hidden_size", "32",
    "--tokenizer_vocab_size", "300", "--ot_iterations", "10", "--max_length", "24",
    "--text_dropout", "0", "--visual_dropout", "0",
    "--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    "--logging_steps", "1", "--report_to", "none", "--dataloader_num_workers", "0", "--query", "null",
    "--use_cpu", "true",
]


def _logged(log: str, key: str) -> list[float]:
    """`key` of every per-step training log line (`{'loss': ..., 'grad_norm': ..., 'epoch': ...}`)."""
    found = (re.search(rf"'{key}': '([^']+)'", line) for line in re.findall(r"\{'loss': [^}]*\}", log))
    return [float(match.group(1)) for match in found if match]


# The distillation options that change what a process sees: batches of teacher-neighbour groups
# (one global order, sharded by batches) and a relation queue (filled with gathered batches).
KT_OPTIONS = ["--precompute_teacher", "true", "--kt_teacher_keys", "item", "--kt_neighbour_group_size", "4",
              "--kt_queue_size", "12", "--kt_teacher_entropy", "1.0"]


@pytest.mark.parametrize("options", [[], KT_OPTIONS], ids=["recipe", "kt_options"])
def test_two_process_training_run_ends_with_the_weights_of_one_process(tmp_path, options):
    run = [str(REPO / "trainer" / "run.py"), str(REPO / "trainer" / "configs" / "demo.yaml"), *options]
    single = subprocess.Popen(
        [sys.executable, *run, *TRAIN, "--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", str(2 * B)],
        env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    double = subprocess.Popen(
        torchrun(2, *run, *TRAIN, "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", str(B)),
        env=subprocess_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    logs = {}
    try:
        for name, proc in (("one", single), ("two", double)):
            logs[name], _ = proc.communicate(timeout=600)
    finally:
        for proc in (single, double):
            if proc.poll() is None:
                proc.kill()
    for name, proc in (("one", single), ("two", double)):
        assert proc.returncode == 0, f"{name}:\n{logs[name][-5000:]}"
    # Trainer logs the loss and the gradient norm averaged over processes: the same data at every
    # step; the same epoch fraction: 2 processes really ran (1 process x B would be at half of it).
    for key in ("loss", "grad_norm", "epoch"):
        one, two = (_logged(logs[name], key) for name in ("one", "two"))
        assert len(one) == 6 and one == pytest.approx(two, rel=1e-3), (key, one, two)  # 3 steps x 2 stages
    # Each loss term is logged over all processes too (each process holds half of the batch's rows).
    for key in ("loss_sentence", "loss_word", "loss_source", "loss_mt", "loss_kt"):
        one, two = (_logged(logs[name], key) for name in ("one", "two"))
        assert len(one) == 3 and one == pytest.approx(two, rel=1e-3), (key, one, two)  # 3 steps of one stage
    for stage in ("cross_lingual", "cross_modal"):
        one = load_file(str(tmp_path / "one" / stage / "model.safetensors"))
        two = load_file(str(tmp_path / "two" / stage / "model.safetensors"))
        assert one.keys() == two.keys()
        for name in one:
            # float32 training: the two runs add the same numbers in different orders (per-rank
            # matmuls, DDP's all-reduce), ~1e-7 apart after these steps.
            diff = float((one[name].double() - two[name].double()).abs().max())
            assert diff < 1e-5, f"{stage}: {name} differs by {diff:.3g} between 1 x {2 * B} and 2 x {B}"
