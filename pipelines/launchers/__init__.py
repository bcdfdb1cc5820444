"""Where training processes run: the job description shared by every remote launcher, and one module
per cluster kind (Kubernetes, SkyPilot, SLURM) that turns it into that scheduler's submission and
polls it to the end. The Dagster resource choosing between them is
:class:`pipelines.defs.resources.TrainingLauncher`."""
