"""The repository's generated files: `dvc.yaml` and the README's result blocks.

`dvc.yaml` comes from the stage table and the code's imports, the README's blocks from `reports/`.
Development commands; no stage imports them.
"""
