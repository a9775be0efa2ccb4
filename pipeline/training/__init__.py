"""The runner: training loop, scoring, a run's MLflow record, one train + evaluate, a run to a target.

Imports `pipeline.core`, `pipeline.data` and `pipeline.model`; never sweeps, analysis or a command.
"""
