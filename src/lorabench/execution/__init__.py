"""Running a job: the training settings, the one training loop every method plugs into, evaluation, inference
timing and memory, FLOPs, and the two torch jobs (lorabench.execution.jobs)."""
