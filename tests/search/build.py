"""Run `build_index` in its own process(es), for the kill-and-rerun and the torchrun tests.

    python tests/search/build.py MODEL IMAGES OUT [--slow SECONDS] [--batch-size B] [--chunk-size C]
    torchrun --nproc_per_node 2 tests/search/build.py MODEL IMAGES OUT

``--slow`` sleeps before every model forward (timing only: the embeddings are unchanged), so a
test can SIGKILL the process after a few shards are written and before the build ends.
"""

import argparse
import sys
import time

from cl2cm_hf.search import index_build


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("images")
    parser.add_argument("out")
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=4)
    args = parser.parse_args()
    load = index_build.load_checkpoint

    def slow_load(name, device=None):
        model, processor = load(name, device)
        forward = model.get_image_features

        def slow_forward(**inputs):
            time.sleep(args.slow)
            return forward(**inputs)

        model.get_image_features = slow_forward
        return model, processor

    if args.slow:
        index_build.load_checkpoint = slow_load
    report = index_build.build_index(args.model, args.out, images=args.images, batch_size=args.batch_size,
                                     chunk_size=args.chunk_size, num_workers=0, faiss="none", progress=False)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
