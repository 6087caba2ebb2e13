"""The options of the distillation term (issue 14): entropy-calibrated teachers, relations over a
queue of earlier keys, item-level teacher keys and teacher-neighbourhood batches."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cl2cm_hf.losses import entropy_calibrated, relational_distillation
from cl2cm_hf.training.neighbour_batches import TeacherNeighbourSampler, item_keys, neighbour_groups
from cl2cm_hf.training.relation_queue import RelationQueue

DT = torch.float64


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT), dim=-1)


def entropy(logits):
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1)


@pytest.mark.parametrize("target", [0.3, 1.0, 2.4])
def test_entropy_calibrated_rows_reach_the_target_entropy(target):
    logits = 20 * unit(7, 5, seed=1) @ unit(12, 5, seed=2).t()
    logits[3] *= 0.05  # a nearly flat row and a sharp one reach the same entropy
    calibrated = entropy_calibrated(logits, target)
    assert torch.allclose(entropy(calibrated), torch.full((7,), target, dtype=DT), atol=1e-6)
    # Only a positive factor per row: the order of every row is kept.
    assert torch.equal(calibrated.argsort(1), logits.argsort(1))


def test_entropy_calibrated_unreachable_targets_give_the_nearest_end_and_flat_rows_stay():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, -1.0]], dtype=DT)
    assert torch.allclose(entropy(entropy_calibrated(logits, 0.5))[0], torch.tensor(math.log(4), dtype=DT))
    assert entropy(entropy_calibrated(logits, 2.0))[1].item() == pytest.approx(math.log(4), abs=1e-4)  # above log 4: ~uniform


def test_distillation_with_teacher_entropy_uses_the_calibrated_teacher():
    sq, sk, tq, tk = (unit(6, 5, seed=s) for s in range(10, 14))
    got = relational_distillation(sq, sk, tq, tk, 8.0, 20.0, teacher_entropy=1.0)
    rows_t = F.log_softmax(entropy_calibrated(20.0 * tq @ tk.t(), 1.0), 1)
    cols_t = F.log_softmax(entropy_calibrated(20.0 * tk @ tq.t(), 1.0), 1)
    rows = F.kl_div(F.log_softmax(8.0 * sq @ sk.t(), 1), rows_t, log_target=True, reduction="batchmean")
    cols = F.kl_div(F.log_softmax(8.0 * sk @ sq.t(), 1), cols_t, log_target=True, reduction="batchmean")
    assert got.item() == pytest.approx(((rows + cols) / 2).item(), abs=1e-10)
    assert got.item() != pytest.approx(relational_distillation(sq, sk, tq, tk, 8.0, 20.0).item(), rel=1e-3)


def test_distillation_queue_extends_the_keys_of_the_rows_only():
    sq, sk, tq, tk = (unit(4, 5, seed=s) for s in range(20, 24))
    qs, qt = unit(3, 5, seed=24), unit(3, 5, seed=25)
    got = relational_distillation(sq, sk, tq, tk, 6.0, 15.0, queue_student_k=qs, queue_teacher_k=qt)
    keys_s, keys_t = torch.cat([sk, qs]), torch.cat([tk, qt])
    rows = F.kl_div(F.log_softmax(6.0 * sq @ keys_s.t(), 1), F.log_softmax(15.0 * tq @ keys_t.t(), 1), log_target=True, reduction="batchmean")
    cols = F.kl_div(F.log_softmax(6.0 * sk @ sq.t(), 1), F.log_softmax(15.0 * tk @ tq.t(), 1), log_target=True, reduction="batchmean")
    assert got.item() == pytest.approx(((rows + cols) / 2).item(), abs=1e-10)
    # No gradient reaches the queue's (stored) keys.
    qs.requires_grad_(True)
    relational_distillation(sq, sk.clone().requires_grad_(True), tq, tk, 6.0, 15.0, queue_student_k=qs, queue_teacher_k=qt).backward()
    assert qs.grad is None


def test_relation_queue_keeps_the_newest_pairs_in_order():
    queue = RelationQueue(5)
    assert len(queue) == 0 and queue.keys() == (None, None)
    for step in range(3):
        queue.push(torch.full((2, 3), float(step)), torch.full((2, 3), -float(step)))
    student, teacher = queue.keys()
    assert student[:, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 2.0]
    assert teacher[:, 0].tolist() == [-0.0, -1.0, -1.0, -2.0, -2.0]
    with pytest.raises(ValueError, match="kt_queue_size"):
        RelationQueue(0)


def clustered_items(n_clusters=6, per_cluster=4, rows_per_item=3, d=16, seed=0):
    """Rows of items in tight clusters: (item id per row, row embeddings, cluster of each item)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    ids, embeddings, cluster = [], [], {}
    for c in range(n_clusters):
        for i in range(per_cluster):
            item = f"c{c}i{i}"
            cluster[item] = c
            for _ in range(rows_per_item):
                ids.append(item)
                embeddings.append(centres[c] + 0.01 * rng.normal(size=d))
    order = rng.permutation(len(ids))
    return [ids[i] for i in order], np.array(embeddings)[order], cluster


def test_item_keys_average_each_items_rows():
    items, rows, keys = item_keys(["a", "b", "a"], np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 1.0]]))
    assert items == ["a", "b"] and rows == {"a": [0, 2], "b": [1]}
    assert np.allclose(keys, [[2**-0.5, 2**-0.5], [0.0, 1.0]])


def test_neighbour_groups_partition_and_find_the_clusters():
    ids, embeddings, cluster = clustered_items()
    items, _, keys = item_keys(ids, embeddings)
    groups = neighbour_groups(keys, 4, np.random.default_rng(0))
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(items)))
    assert all(len({cluster[items[i]] for i in g}) == 1 for g in groups)  # each group is one cluster


def test_neighbour_sampler_epoch_order():
    ids, embeddings, cluster = clustered_items()
    sampler = TeacherNeighbourSampler(ids, embeddings, group_size=4, batch_size=8, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(ids)))  # every row once per epoch
    assert order == list(sampler)  # deterministic for (seed, epoch)
    sampler.set_epoch(1)
    assert order != list(sampler)
    # Each group of 4 consecutive rows is one cluster of 4 distinct items.
    for start in range(0, len(order), 4):
        items = [ids[r] for r in order[start : start + 4]]
        assert len(set(items)) == 4 and len({cluster[i] for i in items}) == 1


def test_neighbour_sampler_refuses_groups_that_do_not_fill_batches():
    ids, embeddings, _ = clustered_items()
    with pytest.raises(ValueError, match="must divide per_device_train_batch_size=10"):
        TeacherNeighbourSampler(ids, embeddings, group_size=4, batch_size=10, seed=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--precompute_teacher", "false", "--kt_teacher_keys", "item"], "kt_teacher_keys='item' reads the teacher's embeddings .* precompute_teacher: true"),
        (["--precompute_teacher", "false", "--kt_neighbour_group_size", "8"], "kt_neighbour_group_size=8 reads .* precompute_teacher: true"),
        (["--precompute_teacher", "true", "--kt_neighbour_group_size", "1"], "kt_neighbour_group_size=1: expected 0"),
        (["--kt_teacher_keys", "items"], "kt_teacher_keys='items' is not allowed"),
        (["--kt_student_scale", "mine"], "kt_student_scale='mine' is not allowed"),
        (["--kt_queue_size", "-1"], "kt_queue_size=-1 is not allowed"),
    ],
)
def test_distillation_settings_are_checked_when_read(overrides, message):
    from cl2cm_hf.training.recipe import load_config, parse_config

    with pytest.raises(ValueError, match=message):
        parse_config(load_config(Path(__file__).resolve().parents[1] / "trainer" / "configs" / "demo.yaml", overrides))
