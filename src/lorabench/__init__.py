"""lorabench: a benchmark of parameter-efficient fine-tuning methods.

The package holds the logic; ``workflow/scripts/*.py`` only read Snakemake's inputs and call it.
"""

__version__ = "0.1.0"
