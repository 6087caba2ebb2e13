"""Neighbour structure of real embeddings against the synthetic data of `search_scale` (issue 24): is the
10M benchmark's exact top-10 as distinguishable from the rest as real neighbours are?

    python benchmarks/search_calibration.py --me5 DIR [--n 2000] [--cache DIR]

Per query (the first 100 rows, against the other rows): d1 and d10, the cosine distances
(sqrt(2 - 2 cos)) to the 1st and 10th neighbour, the median distance to the gallery, and the local
intrinsic dimension (LID, Levina-Bickel maximum likelihood over the 20 nearest); medians over queries.
Real: multilingual-e5-small ("passage: " prefix, mean pooling; built offline by
`../shared/tools/build_me5_small.py` into DIR) over the first `--n` Multi30K train.en captions, and the
1000 ResNet-50 test_2016 features (centred). Synthetic: one cluster of `search_scale`'s generator at the
density of the 10M benchmark (10M / 4096 = 2441 items), for isotropic noise 0.02 (before) and 0.01,
and at the density of the 1M runs (244 items).
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def neighbour_stats(gallery: np.ndarray, queries: np.ndarray, k: int = 20) -> dict:
    """Medians over `queries` of d1, d10, the median distance, d10 / median, d1 / d10 and the LID."""
    distance = torch.sqrt(torch.clamp(2 - 2 * torch.from_numpy(queries) @ torch.from_numpy(gallery).T, min=1e-12))
    near = torch.topk(distance, k, dim=1, largest=False).values.numpy()
    median = torch.median(distance, dim=1).values.numpy()
    lid = 1 / np.mean(np.log(near[:, -1:] / near[:, :-1]), axis=1)
    return {"d1": np.median(near[:, 0]), "d10": np.median(near[:, 9]), "median": np.median(median),
            "d10/median": np.median(near[:, 9] / median), "d1/d10": np.median(near[:, 0] / near[:, 9]), "LID": np.median(lid)}


def e5_captions(model_dir: Path, n: int, cache: Path) -> np.ndarray:
    path = cache / f"e5_train_en_{n}.npy"
    if path.exists():
        return np.load(path)
    from transformers import AutoModel, AutoTokenizer

    texts = gzip.open(DATA / "multi30k" / "task1" / "raw" / "train.en.gz", "rt", encoding="utf-8").read().splitlines()[:n]
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.inference_mode():
        for a in range(0, len(texts), 256):
            batch = tokenizer(["passage: " + t for t in texts[a : a + 256]], padding=True, truncation=True, max_length=64,
                              return_tensors="pt")
            mask = batch["attention_mask"][..., None].float()
            pooled = (model(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    np.save(path, np.concatenate(out))
    return np.load(path)


def synthetic_cluster(noise: float, items: int = 2441 + 100, d: int = 256, dims: int = 32, seed: int = 0) -> np.ndarray:
    """One cluster of `search_scale._items` (centre, 0.12 x a `dims`-d Gaussian in a random subspace, noise)."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((1, d), dtype=np.float32) / np.sqrt(d)
    basis = rng.standard_normal((dims, d), dtype=np.float32) / np.sqrt(d)
    x = centre + 0.12 * rng.standard_normal((items, dims), dtype=np.float32) @ basis
    x += noise * rng.standard_normal((items, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--me5", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp"))
    args = parser.parse_args(argv)
    resnet = np.load(DATA / "multi30k-resnet50" / "test_2016_flickr-resnet50-avgpool.npy").astype(np.float32)
    resnet -= resnet.mean(0)
    resnet /= np.linalg.norm(resnet, axis=1, keepdims=True)
    sets = {f"e5-small, {args.n} Multi30K captions": e5_captions(args.me5, args.n, args.cache),
            "ResNet-50, 1000 test_2016 images (centred)": resnet,
            "synthetic cluster, noise 0.02, 1M density (244 items)": synthetic_cluster(0.02, items=244 + 100),
            "synthetic cluster, noise 0.02 (2441 items)": synthetic_cluster(0.02),
            "synthetic cluster, noise 0.01 (2441 items)": synthetic_cluster(0.01)}
    print("| embeddings | d1 | d10 | median | d10 / median | d1 / d10 | LID (k=20) |\n|---|---|---|---|---|---|---|")
    for name, x in sets.items():
        s = neighbour_stats(x[100:], x[:100])
        print(f"| {name} | " + " | ".join(f"{v:.3f}" if key != "LID" else f"{v:.1f}" for key, v in s.items()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
