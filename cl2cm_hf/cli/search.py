"""``cl2cm-search INDEX "ein roter Hund" --top 5 [--json]``: query an index from the shell (or
``--image FILE``, ``--video FILE``, ``--like ID``: more like this).

Prints a table (rank, score, id, path, caption) or, with ``--json``, one JSON object
(``{"index", "query", "hits": [{"rank", "id", "path", "score", "caption"}]}``). Exit status 0 on
success, 2 with a one-line message on a missing or broken index, a bad argument or image, a query
of which the model knows no word, or a model that is not the index's (``--allow-model-mismatch``
searches anyway, with a warning).
"""

import argparse
import json
import sys

from cl2cm_hf.cli import run_tool
from cl2cm_hf.errors import CL2CMError
from cl2cm_hf.search.checks import int_option, printable
from cl2cm_hf.search.index import SearchIndex


def _table(hits) -> str:
    rows = [("rank", "score", "id", "path", "caption")]
    rows += [(str(h.rank), f"{h.score:.4f}", printable(h.id), printable(h.path or ""), printable(h.caption or "")) for h in hits]
    widths = [max(len(row[c]) for row in rows) for c in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + ("  " + row[4] if row[4] else "")
                     for row in rows).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cl2cm-search", description=__doc__.splitlines()[0])
    parser.add_argument("index", help="index folder written by cl2cm-index")
    parser.add_argument("query", nargs="?", help="text query, in any language the model was trained on")
    parser.add_argument("--image", help="query with this image instead (more like this)")
    parser.add_argument("--video", help="query with this video file instead (more like this; sampled as the index's videos)")
    parser.add_argument("--like", metavar="ID", help="query with the indexed item ID instead (more like this; any index)")
    parser.add_argument("--top", type=int_option("top_k"), default=None,
                        help="results to show: at most the index's size (default 5, or every item of a smaller index)")
    parser.add_argument("--exact", action="store_true", help="exact search even when the index has faiss")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--allow-model-mismatch", action="store_true",
                        help="search although the index's checkpoint changed since the build (prints a warning)")
    args = parser.parse_args(argv)
    given = [x for x in (args.query, args.image, args.video, args.like) if x is not None]
    if len(given) != 1:
        parser.error("give a text query, --image FILE, --video FILE or --like ID (one of them)")

    def run():
        # --exact never reads the faiss file (or imports faiss): an HNSW index is as large as the embeddings
        index = SearchIndex.load(args.index, use_faiss=not args.exact, allow_model_mismatch=args.allow_model_mismatch)
        if index.model_mismatch:
            print(f"cl2cm-search: warning: {printable(index.model_mismatch)}", file=sys.stderr)
        if args.top is not None and len(index) and args.top > len(index):
            raise CL2CMError(f"--top {args.top} is more than the {len(index)} items of the index {args.index}")
        if args.image:
            hits = index.search_image(args.image, args.top, exact=args.exact)
        elif args.video:
            hits = index.search_video(args.video, args.top, exact=args.exact)
        elif args.like is not None:
            hits = index.search_item(args.like, args.top, exact=args.exact)
        else:
            hits = index.search(args.query, args.top, exact=args.exact)
        show(index, hits)

    def show(index, hits):
        if args.json:
            query = args.query or ({"image": args.image} if args.image else {"video": args.video} if args.video else {"like": args.like})
            print(json.dumps({"index": str(index.folder), "query": query,
                              "hits": [h.to_dict() for h in hits]}, ensure_ascii=False, indent=1))
        else:
            print(f"{index.metadata['count']} items, model {printable(str(index.metadata['model']))}; "
                  f"query {printable(repr(given[0]))}")
            print(_table(hits))

    return run_tool("cl2cm-search", run)


if __name__ == "__main__":
    sys.exit(main())
