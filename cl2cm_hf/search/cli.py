"""``cl2cm-search INDEX "ein roter Hund" --top 5 [--json]``: query an index from the shell.

Prints a table (rank, score, id, path, caption) or, with ``--json``, one JSON object
(``{"index", "query", "hits": [{"rank", "id", "path", "score", "caption"}]}``). Exit status 0 on
success, 2 with a one-line message on a missing or broken index, a bad argument or image.
"""

import argparse
import json
import sys

from .index import BrokenIndexError, SearchIndex
from .index_build import BadImage


def _table(hits) -> str:
    rows = [("rank", "score", "id", "path", "caption")]
    rows += [(str(h.rank), f"{h.score:.4f}", h.id, h.path or "", h.caption or "") for h in hits]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "")
                     for row in rows).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cl2cm-search", description=__doc__.splitlines()[0])
    parser.add_argument("index", help="index folder written by cl2cm-index")
    parser.add_argument("query", nargs="?", help="text query, in any language the model was trained on")
    parser.add_argument("--image", help="query with this image instead (more like this)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--exact", action="store_true", help="exact search even when the index has faiss")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if (args.query is None) == (args.image is None):
        parser.error("give a text query or --image FILE (one of them)")
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    try:
        index = SearchIndex.load(args.index)
        if args.image:
            hits = index.search_image(args.image, args.top, exact=args.exact)
        else:
            hits = index.search(args.query, args.top, exact=args.exact)
    except (BrokenIndexError, BadImage, FileNotFoundError, ValueError, OSError) as err:
        print(f"cl2cm-search: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"index": str(index.folder), "query": args.query or {"image": args.image},
                          "hits": [h.to_dict() for h in hits]}, ensure_ascii=False, indent=1))
    else:
        print(f"{index.metadata['count']} items, model {index.metadata['model']}; query {args.query or args.image!r}")
        print(_table(hits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
