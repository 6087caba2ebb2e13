"""Search a saved gallery with one caption, through the checkpoint's own processor and the one
encode path (`cl2cm_hf.inference`).

    python trainer/query.py RUN/cross_modal "ein roter Hund neben einem Auto" --gallery RUN/cross_modal/test_gallery

The gallery is a feature-store folder (``features.safetensors``, ``ids.json``) or an image-store
folder (``images.json`` and the image files, decoded by the checkpoint's image processor).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from cl2cm_hf.data import open_visual_store
from cl2cm_hf.inference import encode_texts, encode_visual, load_model_and_processor
from cl2cm_hf.retrieval import topk


@torch.no_grad()
def search(model, processor, query: str, gallery, top: int = 5, max_length: int = 64) -> list[tuple[str, float]]:
    """The `top` gallery items for `query`, best first, as ``(visual_id, score)``."""
    ids = gallery.ids
    text = encode_texts(model.get_text_features, processor, [query], max_length=max_length)
    visual = encode_visual(model, gallery, ids, processor=processor)
    scores, best = topk(text, visual, min(top, len(ids)))
    return [(ids[i], s) for i, s in zip(best[0].tolist(), scores[0].tolist())]


def print_results(model, query: str, hits, captions: dict[str, str]) -> None:
    print(f"query: {query!r}  (model code: {type(model).__module__})")
    for rank, (visual_id, score) in enumerate(hits, start=1):
        print(f"  {rank}. {visual_id}  score {score:.3f}  {captions.get(visual_id, '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("query")
    parser.add_argument("--gallery", required=True, help="feature-store or image-store folder")
    parser.add_argument("--captions", help="json {visual_id: caption} shown next to each hit")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=64, help="query tokens kept")
    args = parser.parse_args(argv)

    model, processor = load_model_and_processor(args.model)
    captions = json.loads(Path(args.captions).read_text(encoding="utf-8")) if args.captions else {}
    hits = search(model, processor, args.query, open_visual_store(args.gallery), args.top, args.max_length)
    print_results(model, args.query, hits, captions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
