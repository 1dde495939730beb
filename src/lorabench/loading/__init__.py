"""Getting models and data into a job: hub snapshots, model shapes (no torch), fetching and loading models with
their task head, datasets and their tokens, and the quantized storage of a frozen base."""
