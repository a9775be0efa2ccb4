"""Sweeps: the grid, the parent-run callback, one job, Optuna searches, the scaling study.

The callback groups a multirun's jobs under one parent run; the study runs steps-to-target per batch size.

Imports the runner and below (`pipeline.training`, `pipeline.model`, `pipeline.core`); never
analysis or a command.
"""
