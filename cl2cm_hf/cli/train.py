"""``cl2cm-train`` / ``trainer/run.py``: train CL2CM from a YAML recipe (`cl2cm_hf.training.run`),
then run the recipe's query against the final folder's test gallery."""

from __future__ import annotations

import os
import sys

from transformers.utils import logging as hf_logging

from cl2cm_hf.cli import run_tool
from cl2cm_hf.cli.query import query_gallery
from cl2cm_hf.training.recipe import RunSettings, settings_help
from cl2cm_hf.training.run import run

USAGE = """usage: cl2cm-train [RECIPE.yaml] [--key value ...]
       accelerate launch trainer/run.py [RECIPE.yaml] [--key value ...]

Train CL2CM (stage 1 cross-lingual, stage 2 cross-modal) from a YAML recipe; any setting can be
given or overridden on the command line."""


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 after a successful run; 2 with a one-line message for a problem with the recipe,
    the data, a checkpoint or the output folder (``CL2CM_DEBUG=1`` shows the traceback); anything else
    keeps its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # One Trainer bar per stage is the run's progress; transformers' bars of one-shard saves and loads
    # are noise next to it. Process-wide, here at the run's entry, because transformers has no per-call
    # switch; HF_HUB_DISABLE_PROGRESS_BARS=0 keeps them.
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") != "0":
        hf_logging.disable_progress_bar()
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE + "\n" + settings_help())
        return 0

    def train():
        config_path = argv.pop(0) if argv and not argv[0].startswith("--") else None
        settings = RunSettings.load(config_path, argv)
        result = run(settings)
        if result.folder is not None and settings.method.query and settings.training.process_index == 0:
            # The final folder reloaded on its own: what a user of the checkpoint gets.
            query_gallery(str(result.folder), settings.method.query, result.folder / "test_gallery", result.gallery_captions)

    return run_tool("cl2cm-train", train)


if __name__ == "__main__":
    sys.exit(main())
