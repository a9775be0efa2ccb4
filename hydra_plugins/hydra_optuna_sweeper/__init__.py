"""The name of Hydra's official optuna sweeper, for search files written for it (lightning-hydra-template's).

`hydra-optuna-sweeper` does not install with Optuna 5; `optuna_sweeper.OptunaSweeper` here is
this project's sweeper under the official plugin's class path, so such a file runs unchanged.
"""
