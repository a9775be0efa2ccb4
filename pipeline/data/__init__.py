"""The workload's data: dataset mirrors (`sources`, the download alone), the raw file both
first stages check (`raw`), and the processed splits read back verified (`splits`).

Imports `pipeline.core` only.
"""
