"""The configuration, without torch: the schema (every setting's default), validation that names the key at
fault, the learning-rate grid's expansion, and the slices of a config each job reads.

What only a method or a model knows (ranks against a layer's width, SparseLoRA's layer indices, a PEFT config)
is checked by lorabench.methods.checks, which runs this validation first."""

from lorabench.config.validation import ConfigError, validate_config  # noqa: F401
from lorabench.config.views import (curve_points, dataset_entry, dataset_training, method_entries,  # noqa: F401
                                    method_params_on, seed_chunks, sorted_keys)
