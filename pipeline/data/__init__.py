"""The workload's data: dataset mirrors, the raw file, the processed splits read back verified.

`sources` serves the download alone; `raw` is the file both first stages check; `splits` the rest.

Imports `pipeline.core` only.
"""
