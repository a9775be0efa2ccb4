"""The workload's data: dataset mirrors and their formats, and the processed splits read back verified.

Imports `pipeline.core` only.
"""
