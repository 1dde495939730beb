"""SparseLoRA (Khaki et al. 2025): LoRA trained with contextual sparsity of the frozen base.

- ``method``: the registered method (``type: sparselora``);
- ``settings``: its per-layer settings against a model's layer count;
- ``channels``: what FFN and attention sparsity share (narrowed linears, submodules);
- ``ffn`` and ``attention``: the per-batch channel choice and narrowed computation of each;
- ``predictors``: the low-rank predictors, computed once per model.
"""

from lorabench.methods.sparselora.method import SparseLoRA  # noqa: F401  (registration)
