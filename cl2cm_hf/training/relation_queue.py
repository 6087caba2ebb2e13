"""A first-in first-out memory of recent keys for relational distillation (MoCo's queue, here of
pairs): each entry is a student visual embedding and its item's teacher key, so the MT captions of
a batch are related to the batch's items and to the queue's.

Stage 2 on a small dataset sees each item in few batches; a batch of 128 relates each MT caption to
128 items, the queue to up to `size` more, where the teacher's few confident "another image fits
too" relations are likelier to be found. Student entries are detached and a few steps old (as in
MoCo without a momentum encoder); the teacher's are exact (the teacher is frozen).

Every process enqueues the keys of the global batch (gathered), so all processes hold the same
queue and the loss stays the one of a single process on the global batch."""

from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from cl2cm_hf.atomic import atomic_write_bytes
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.losses import gather_with_grad


class RelationQueue:
    """The last `size` (student key, teacher key) pairs, newest last. Saved with each Trainer
    checkpoint (`file_name`), so a resumed run relates its next batches to the same queue."""

    file_name = "relation_queue.safetensors"

    def __init__(self, size: int):
        if size < 1:
            raise CL2CMError(f"kt_queue_size={size}: expected at least 1 (0 switches the queue off)")
        self.size = size
        self.start_empty_without_file = False
        self.student_k: torch.Tensor | None = None
        self.teacher_k: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.student_k is None else len(self.student_k)

    def keys(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(student keys, teacher keys), `(len, d)` each; (None, None) while empty."""
        return self.student_k, self.teacher_k

    @torch.no_grad()
    def push(self, student_k: torch.Tensor, teacher_k: torch.Tensor) -> None:
        """Append this process's batch keys, gathered over processes; drop the oldest beyond `size`."""
        student_k, teacher_k = gather_with_grad(student_k.detach()), gather_with_grad(teacher_k.detach())
        if self.student_k is not None:
            student_k, teacher_k = torch.cat([self.student_k, student_k]), torch.cat([self.teacher_k, teacher_k])
        self.student_k, self.teacher_k = student_k[-self.size :], teacher_k[-self.size :]

    def save(self, path: Path) -> None:
        tensors = {} if self.student_k is None else {"student_k": self.student_k.contiguous(), "teacher_k": self.teacher_k.contiguous()}
        atomic_write_bytes(path, safetensors_bytes(tensors, {"size": str(self.size)}))

    def load(self, path: Path) -> None:
        """The queue saved in a checkpoint, cut to `size`. A checkpoint written while the queue was off
        (`start_empty_without_file`, set when --resume accepted a change of kt_queue_size or lambda_kt)
        holds none: the queue then starts empty."""
        if not Path(path).is_file():
            if self.start_empty_without_file:
                return
            raise FileNotFoundError(
                f"{path}: missing; a checkpoint of a run with kt_queue_size={self.size} and lambda_kt > 0 holds its relation "
                "queue (a checkpoint written with the queue off resumes with it only under --resume_allow_changes kt_queue_size)"
            )
        tensors = load_file(str(path))
        student_k, teacher_k = tensors.get("student_k"), tensors.get("teacher_k")
        self.student_k = None if student_k is None else student_k[-self.size :]
        self.teacher_k = None if teacher_k is None else teacher_k[-self.size :]
