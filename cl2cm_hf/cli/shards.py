"""``cl2cm-shards OUT SHARD [SHARD ...]``: one index over several index folders (one per machine or per
build job), searched by ``cl2cm-search OUT`` and ``cl2cm-app OUT`` like a single index.

The shards are checked (complete indexes, one model, one dim) and ``OUT/metadata.json`` lists them,
relative to OUT; nothing is copied (`cl2cm_hf.search.sharded`). Exit status 0 on success, 2 with a
one-line message on a missing or broken shard or shards of different models."""

import argparse
import sys

from cl2cm_hf.cli import run_tool
from cl2cm_hf.search.checks import printable
from cl2cm_hf.search.sharded import write_sharded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cl2cm-shards", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the sharded index folder to write: new, empty, or a sharded index (replaced)")
    parser.add_argument("shards", nargs="+", help="index folders written by cl2cm-index with the same model")
    args = parser.parse_args(argv)

    def run():
        metadata = write_sharded(args.out, args.shards)
        print(f"{printable(args.out)}: {metadata['count']} items in {len(args.shards)} shards, model "
              f"{printable(str(metadata['model']))}")

    return run_tool("cl2cm-shards", run)


if __name__ == "__main__":
    sys.exit(main())
