"""The parts of `benchmarks/speed.py`, one job per file: `timing` (interleaved repeats, ratios,
peak memory, result rows), one module per section (`ot_loss`, `evaluation`, `gallery`, `step`,
`encode`, `neighbour`) and `report` (the results page)."""
