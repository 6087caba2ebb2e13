"""Training: run settings, data sources, model set-up, the frozen-layer cache, the two Trainer
subclasses and the run itself (`cl2cm_hf.training.run`, behind `trainer/run.py` and `cl2cm-train`)."""
