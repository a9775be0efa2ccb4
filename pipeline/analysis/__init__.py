"""Analysis of a finished sweep: statistics, tables, plots, the champion in the registry.

Reads runs from the MLflow store (`pipeline.core`); imports no training, sweep or command module
(the Optuna importance, read from the study, aside: `pipeline.compare` asks `pipeline.sweeps.search`).
"""
