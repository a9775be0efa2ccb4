"""Sweeps: the grid, the callback that groups a multirun under a parent run, one job, Optuna searches,
the batch-size scaling study.

Imports the runner and below (`pipeline.training`, `pipeline.model`, `pipeline.core`); never
analysis or a command.
"""
