"""mnist-pipeline's Hydra plugins: the `grid` and `optuna` sweepers, and the config schema.

Hydra imports every module of every `hydra_plugins` package whenever it starts, DVC's own
composition of `conf/` (`dvc exp run`) and every single-run command included. So these
modules hold only what Hydra must find: importing this package registers the config
schema (`schema` in conf/config.yaml's defaults); `sweepers.py` holds the two sweeper
classes, whose work is imported from `pipeline.sweeps` when Hydra calls them, in a
multirun (a deferred import for start-up and for DVC: no single-run stage depends on it).
"""

import pipeline.core.config  # noqa: F401 - registers the schema
