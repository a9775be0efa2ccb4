"""Analysis of a finished sweep or study: statistics, tables, plots, performance profiles, the champion.

Reads runs from the MLflow store (`pipeline.core`); imports no training, sweep or command module
(the Optuna importance, read from the study, aside: `pipeline.compare` asks `pipeline.sweeps.search`).
"""
