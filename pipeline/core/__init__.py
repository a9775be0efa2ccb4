"""Foundations: errors, config schema (with the optimizer the settings instantiate), paths, files,
environment variables, the MLflow store, the entry point.

Imports nothing of `pipeline` outside `pipeline.core`; everything else may import it.
"""
