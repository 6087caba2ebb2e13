"""Input adaptation: embedding matrices (tensors, numpy arrays, memmaps) read by row blocks as
float32 tensors, and the checks of shapes and caption-to-item indices, with errors naming the input."""

from __future__ import annotations

import numpy as np
import torch

from cl2cm_hf.errors import CL2CMError


class Rows:
    """Read access by row blocks to an ``(n, d)`` matrix held as a tensor or a numpy array
    (``np.memmap`` included); blocks come back as float32 tensors on `device`."""

    def __init__(self, data, name: str, device: torch.device | None = None):
        self.name = name
        if isinstance(data, torch.Tensor):
            if data.is_complex() or data.dtype == torch.bool:
                raise CL2CMError(f"{name} must hold real numbers, got dtype {data.dtype}")
            self._tensor, self._array = data.detach(), None
            shape = tuple(data.shape)
            self.device = data.device if device is None else device
        else:
            array = data if isinstance(data, np.ndarray) else np.asarray(data)
            if array.dtype.kind not in "fiu":
                raise CL2CMError(f"{name} must hold real numbers, got dtype {array.dtype}")
            self._tensor, self._array = None, array
            shape = array.shape
            self.device = torch.device("cpu") if device is None else device
        if len(shape) != 2:
            raise CL2CMError(f"{name} must be a 2-D (n, d) matrix of embeddings, got shape {shape}")
        if shape[0] == 0 or shape[1] == 0:
            raise CL2CMError(f"{name} is empty (shape {shape})")
        self.n, self.d = int(shape[0]), int(shape[1])

    def block(self, start: int, stop: int) -> torch.Tensor:
        if self._tensor is not None:
            return self._tensor[start:stop].to(device=self.device, dtype=torch.float32)
        part = self._array[start:stop]
        if part.dtype != np.float32 or not part.flags.c_contiguous or not part.flags.writeable:
            part = np.array(part, dtype=np.float32, order="C")  # a bounded copy (memmap, other dtypes)
        return torch.from_numpy(part).to(self.device)

    def take(self, index: np.ndarray) -> torch.Tensor:
        """Rows at `index` (int64 numpy array) as a float32 tensor."""
        if self._tensor is not None:
            picked = self._tensor.index_select(0, torch.as_tensor(index, device=self._tensor.device))
            return picked.to(device=self.device, dtype=torch.float32)
        return torch.from_numpy(np.asarray(self._array[index], dtype=np.float32)).to(self.device)


def check_pair(queries: Rows, gallery: Rows) -> None:
    if queries.d != gallery.d:
        raise CL2CMError(
            f"embedding dims differ: {queries.name} has d={queries.d} but {gallery.name} has d={gallery.d}"
        )


def check_text_to_visual(text_to_visual, n_text: int, n_visual: int) -> np.ndarray:
    """`text_to_visual` as an int64 array of one in-range gallery index per caption."""
    if isinstance(text_to_visual, torch.Tensor):
        text_to_visual = text_to_visual.detach().cpu().numpy()
    index = np.asarray(text_to_visual)
    if index.ndim != 1 or index.shape[0] != n_text:
        raise CL2CMError(
            f"text_to_visual must hold one visual index per caption: expected shape ({n_text},), got {index.shape}"
        )
    if index.dtype.kind not in "iu":
        if index.dtype.kind == "f" and np.all(np.isfinite(index)) and np.all(index == np.round(index)):
            index = index.astype(np.int64)
        else:
            raise CL2CMError(f"text_to_visual must hold integer gallery indices, got dtype {index.dtype}")
    index = index.astype(np.int64)
    bad = np.nonzero((index < 0) | (index >= n_visual))[0]
    if bad.size:
        raise CL2CMError(
            f"text_to_visual[{int(bad[0])}]={int(index[bad[0]])} is out of range for a gallery of "
            f"{n_visual} visual items ({bad.size} caption(s) out of range)"
        )
    return index
