"""Every environment variable the pipeline sets or reads to pass values between processes.

A sweep hands values from its launcher process to each job through Hydra's
`hydra.job.env_set` (`pipeline.sweeps.callback`): Hydra sets them in whichever process
runs the job (in-process, joblib, submitit, SLURM) for the job's duration and restores
them afterwards, so nothing outlives a sweep. Besides these, a process configures its own
libraries through their variables before importing them: `KERAS_BACKEND` (core/app.py),
`XLA_FLAGS` threads (training/loop.py) and MLflow's HTTP retry limits (core/store.py);
processes it starts inherit them. The one other thing that crosses processes is on disk: the
sweep records under `<mlruns_dir>/sweeps/`, by which compare and tune find the last sweep
(the compare stage under DVC reads the sweep stage's own record, `<mlruns_dir>/stages/sweep.json`).
"""

# The sweep's MLflow parent run id (not MLFLOW_RUN_ID, which makes a job resume the parent).
PARENT_RUN = "MNIST_PIPELINE_PARENT_RUN_ID"
# The keys the sweep varies, comma-separated: they name each job's cell and runs.
SWEPT_KEYS = "MNIST_PIPELINE_SWEPT_KEYS"
# Compute threads per job when jobs run side by side on one machine.
THREADS = "MNIST_PIPELINE_THREADS"
# The Hydra overrides that a stage run by DVC found for params.yaml (tagged on its runs).
DVC_OVERRIDES = "MNIST_PIPELINE_DVC_OVERRIDES"
# Set by DVC for the commands it runs: the stage, the project root, the experiment.
DVC_STAGE, DVC_ROOT, DVC_EXP_NAME, DVC_EXP_BASELINE_REV = (
    "DVC_STAGE",
    "DVC_ROOT",
    "DVC_EXP_NAME",
    "DVC_EXP_BASELINE_REV",
)
