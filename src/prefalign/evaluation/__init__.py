"""Evaluation: lm-evaluation-harness runs over models and per-epoch checkpoints, the per-epoch
Last / Avg / Std aggregation of the PoFT paper's Table 1, and answer export for judge-based
benchmarks (MT-Bench, AlpacaEval 2.0)."""
