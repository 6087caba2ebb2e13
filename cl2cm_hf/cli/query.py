"""Search a saved gallery with one caption, through the checkpoint's own processor and the one
query path (`SearchIndex`, here over the gallery in memory).

    python trainer/query.py RUN/cross_modal "ein roter Hund neben einem Auto" --gallery RUN/cross_modal/test_gallery

The gallery is a feature-store folder (``features.safetensors``, ``ids.json``) or an image-store
folder (``images.json`` and the image files, decoded by the checkpoint's image processor).
"""

import argparse
import json
import sys
from pathlib import Path

from cl2cm_hf.cli import run_tool
from cl2cm_hf.data import open_visual_store
from cl2cm_hf.inference import load_model_and_processor
from cl2cm_hf.search import SearchIndex


def query_gallery(model_name, query: str, gallery, captions: dict[str, str] | None = None, top: int = 5,
                  max_length: int = 64) -> None:
    """Print the `top` items of the gallery folder for `query`, with their captions when given."""
    model, processor = load_model_and_processor(model_name)
    index = SearchIndex.from_store(open_visual_store(gallery), model, processor, max_length=max_length)
    captions = captions or {}
    print(f"query: {query!r}  (model code: {type(model).__module__})")
    for hit in index.search(query, min(top, len(index))):
        print(f"  {hit.rank}. {hit.id}  score {hit.score:.3f}  {captions.get(hit.id, '')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("query")
    parser.add_argument("--gallery", required=True, help="feature-store or image-store folder")
    parser.add_argument("--captions", help="json {visual_id: caption} shown next to each hit")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=64, help="query tokens kept")
    args = parser.parse_args(argv)

    def run():
        captions = json.loads(Path(args.captions).read_text(encoding="utf-8")) if args.captions else {}
        query_gallery(args.model, args.query, args.gallery, captions, args.top, args.max_length)

    return run_tool("query", run)


if __name__ == "__main__":
    sys.exit(main())
