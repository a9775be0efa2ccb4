"""The runner: the training loop, scoring, what a run records in MLflow, one train + evaluate, a run to a target.

Imports `pipeline.core`, `pipeline.data` and `pipeline.model`; never sweeps, analysis or a command.
"""
