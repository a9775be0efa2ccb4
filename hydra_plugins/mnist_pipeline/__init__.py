"""mnist-pipeline's Hydra plugins: the `grid` sweeper, and the config schema.

Hydra imports every `hydra_plugins` package when it starts, DVC's own composition of
`conf/` (`dvc exp run`) included; importing this one registers the config schema
(`schema` in conf/config.yaml's defaults) in Hydra's ConfigStore.
"""

import pipeline.schema  # noqa: F401 - registers the schema
