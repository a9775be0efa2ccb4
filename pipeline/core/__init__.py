"""Foundations: errors, config schema, paths, files, environment variables, MLflow store, entry point.

The schema's module also turns the settings into the optimizer they instantiate.

Imports nothing of `pipeline` outside `pipeline.core`; everything else may import it.
"""
