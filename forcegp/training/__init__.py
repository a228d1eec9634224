"""Training: initialisation, size budgets, memory and device planning, the optimiser loop, the
stagewise fit, checkpoints, the pipeline, evaluation and calibration."""
