"""From run outputs to verdicts, without torch: task metrics, the summary, convergence, statistics, the
report's comparisons and discussion, figures, and the learning-rate choice. It reads files through
lorabench.io and never imports torch (tests/test_layout.py checks)."""
