"""`hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper`: this project's Optuna sweeper (see __init__)."""

from hydra_plugins.mnist_pipeline.sweepers import OptunaSweeper as _OptunaSweeper


class OptunaSweeper(_OptunaSweeper):
    """The official plugin's class path, this project's search (`pipeline.sweeps.search`)."""
