"""The report's Discussion on summaries whose answers are known: verdicts follow the numbers, and missing
comparisons say so."""

import pandas as pd

from lorabench.analysis.discussion import NOT_ENOUGH, discussion_lines
from lorabench.methods import type_traits


def _runs(method, method_type, accuracy, sparsity=0.0, adapter_params=1000, quantize="none", mem=100.0,
          param_bytes=4000):
    return [{"dataset": "sst2", "task": "classification", "method": method, "method_type": method_type,
             "seed": seed, "accuracy": acc, "adapter_sparsity": sparsity, "adapter_params": adapter_params,
             "quantize": quantize, "peak_train_mem_mb": mem + seed, "param_bytes": param_bytes,
             "train_time_s": 10.0 + seed, "adapter_size_mb": 1.0, "train_steps": 63, "model_repo": "m"}
            for seed, acc in enumerate(accuracy)]


def _text(rows) -> str:
    return "\n".join(discussion_lines(pd.DataFrame(rows), "lora", type_traits()))


def test_sparsity_verdict_names_where_the_metric_leaves_the_interval():
    text = _text(_runs("lora", "lora", [0.80, 0.81, 0.79])
                 + _runs("magnitude_50", "sparse_lora_magnitude", [0.80, 0.80, 0.81], sparsity=0.5)
                 + _runs("magnitude_90", "sparse_lora_magnitude", [0.70, 0.71, 0.69], sparsity=0.9))
    line = next(s for s in text.splitlines() if "sparse_lora_magnitude (2 sparsities)" in s)
    assert "up to adapter sparsity 0.50 (magnitude_50" in line and "leaves it at sparsity 0.90 (magnitude_90" in line
    assert "95% CI" in line


def test_quantization_and_rank_comparisons_are_paired_and_tested():
    text = _text(_runs("lora", "lora", [0.80, 0.81, 0.79])
                 + _runs("lora_nf4", "lora", [0.78, 0.80, 0.77], quantize="nf4", mem=60.0, param_bytes=1000)
                 + _runs("hira", "hira", [0.70, 0.72, 0.71]))
    quant = next(s for s in text.splitlines() if "lora_nf4 (lora), nf4 base against lora" in s)
    assert "accuracy -0.0167" in quant and "paired t p = " in quant and "stored weights 0.25x" in quant
    rank = next(s for s in text.splitlines() if s.startswith("- **sst2**: hira against lora"))
    assert "HiRA worse at 0.05" in rank


def test_missing_comparisons_say_not_enough_data():
    text = _text(_runs("lora", "lora", [0.80]) + _runs("hira_r4", "hira", [0.7], adapter_params=500))
    assert f"{NOT_ENOUGH}: the config runs no sparse_lora_* variant" in text
    assert f"{NOT_ENOUGH}: every variant runs on a full-precision base" in text
    assert f"hira_r4: {NOT_ENOUGH}: no LoRA variant with its 500 adapter parameters" in text


def test_quantization_states_inference_memory_and_why_training_memory_barely_moves():
    lora = _runs("lora", "lora", [0.80, 0.81, 0.79], mem=1000.0)
    nf4 = _runs("lora_nf4", "lora", [0.80, 0.81, 0.79], quantize="nf4", mem=900.0, param_bytes=1000)
    for rows, infer, b1 in ((lora, 1000.0, 700.0), (nf4, 680.0, 350.0)):
        for r in rows:
            r.update(peak_infer_mem_mb=infer, peak_infer_batch1_mem_mb=b1)
    quant = next(s for s in _text(lora + nf4).splitlines() if "lora_nf4 (lora), nf4 base against lora" in s)
    assert "inference at the throughput batch 0.68x; at batch 1 0.50x" in quant
    assert "mostly activations" in quant  # 0.9x training peak: the sentence says why
    for r in nf4:
        r.update(peak_train_mem_mb=500.0 + r["seed"])
    quant = next(s for s in _text(lora + nf4).splitlines() if "lora_nf4 (lora), nf4 base against lora" in s)
    assert "mostly activations" not in quant
