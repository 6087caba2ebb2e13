"""Teacher-neighbourhood batches for stage 2: each batch is made of groups of items that lie near
each other in the frozen teacher's space, so the relations the distillation term copies are
between items the teacher can tell apart only by their details, not between unrelated ones
(whose teacher probabilities are ~0 in a random batch and teach nothing).

Computed from the precomputed teacher embeddings (`precompute_teacher`), anew each epoch from
(seed, epoch): identical on every process, so under DDP each process still takes its own full
batch of the one global order (accelerate shards the batches), and a resumed run sees the same
batches."""

import numpy as np
from torch.utils.data import Sampler

from cl2cm_hf.errors import CL2CMError


def item_keys(item_ids: list[str], embeddings: np.ndarray) -> tuple[list[str], dict[str, list[int]], np.ndarray]:
    """(items in first-seen order, rows of each item, the L2-normalised mean embedding of each item's rows)."""
    rows: dict[str, list[int]] = {}
    for row, item in enumerate(item_ids):
        rows.setdefault(item, []).append(row)
    items = list(rows)
    keys = np.stack([embeddings[rows[item]].mean(0) for item in items])
    return items, rows, keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)


def neighbour_groups(keys: np.ndarray, group_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Partition the rows of `keys` (normalised, `(N, d)`) into groups of `group_size` (the last may be
    smaller): a random unassigned item and its `group_size - 1` nearest unassigned neighbours by
    cosine, until none is left. O(N^2 d / group_size) time, O(N) memory beyond `keys`."""
    unassigned = np.ones(len(keys), dtype=bool)
    groups = []
    for seed in rng.permutation(len(keys)):
        if not unassigned[seed]:
            continue
        candidates = np.flatnonzero(unassigned)
        similarity = keys[candidates] @ keys[seed]
        take = min(group_size, len(candidates))
        nearest = candidates[np.argpartition(-similarity, take - 1)[:take]] if take < len(candidates) else candidates
        if seed not in nearest:  # ties: the seed itself always belongs to its group
            nearest = np.concatenate([[seed], nearest[nearest != seed][: take - 1]])
        unassigned[nearest] = False
        groups.append(nearest)
    return groups


class TeacherNeighbourSampler(Sampler[int]):
    """Row order of one epoch: in pass `s`, every item contributes its `s`-th row (rows shuffled per
    item), its items grouped by `neighbour_groups`; the full groups of a pass in random order, its
    short group last. A batch of `batch_size` rows then holds `batch_size / group_size` groups, and
    no item twice (except where two passes meet)."""

    def __init__(self, item_ids: list[str], embeddings: np.ndarray, group_size: int, batch_size: int, seed: int):
        if group_size < 2:
            raise CL2CMError(f"kt_neighbour_group_size={group_size}: expected at least 2 (0 switches it off)")
        if batch_size % group_size:
            raise CL2CMError(
                f"kt_neighbour_group_size={group_size} must divide per_device_train_batch_size={batch_size} "
                "(each batch is made of whole groups)"
            )
        self.items, self.rows, self.keys = item_keys(item_ids, embeddings)
        self.group_size, self.seed, self.epoch = group_size, seed, 0
        self.num_rows = len(item_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        shuffled = [rng.permutation(self.rows[item]) for item in self.items]
        for slot in range(max(map(len, shuffled))):
            present = np.array([i for i, rows in enumerate(shuffled) if len(rows) > slot])
            groups = neighbour_groups(self.keys[present], self.group_size, rng)
            full = [g for g in groups if len(g) == self.group_size]
            order = [full[i] for i in rng.permutation(len(full))] + [g for g in groups if len(g) < self.group_size]
            for group in order:
                for member in present[group]:
                    yield int(shuffled[member][slot])


def teacher_neighbour_sampler(train_dataset, group_size: int, batch_size: int, seed: int) -> TeacherNeighbourSampler:
    """The sampler for a training set that carries precomputed teacher keys (``teacher_source_embeds``)."""
    if "teacher_source_embeds" not in train_dataset.column_names:
        raise CL2CMError("kt_neighbour_group_size needs the teacher's embeddings of the training set: set precompute_teacher: true")
    embeddings = np.asarray(train_dataset.with_format("numpy")["teacher_source_embeds"], dtype=np.float32)
    return TeacherNeighbourSampler(train_dataset["visual_id"], embeddings, group_size, batch_size, seed)
