"""The repository's generated files: `dvc.yaml` from the stage table and the code's imports, the
README's result blocks from `reports/`. Development commands; no stage imports them.
"""
