"""Train CL2CM: stage 1 (cross-lingual) and/or stage 2 (cross-modal) from one YAML recipe.

    python trainer/run.py trainer/configs/demo.yaml [--key value ...]
    accelerate launch trainer/run.py trainer/configs/demo.yaml
    cl2cm-train trainer/configs/demo.yaml --stage cm --lambda_kt 0

Writes `<output_dir>/cross_lingual/` and `<output_dir>/cross_modal/` (AutoModel-loadable folders with
tokenizer); the final folder also holds `training_config.yaml` (reproduces the run),
`test_results.json` and the model card. Trainer checkpoints live in `<output_dir>/checkpoints/<stage>`
and `--resume` continues from them. The run itself is `cl2cm_hf.training.run`.
"""

import os
import sys

# Before torch starts OpenMP (it reads this once): threads waiting at a barrier sleep instead of
# spinning, so a busy neighbour process does not slow each small op by a scheduler slice (measured
# 10-70x at 2 threads on a 2-core machine; benchmarks/speed.py, section neighbour). Numbers unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cl2cm_hf.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
