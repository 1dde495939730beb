import math

import pytest

from lorabench.analysis import metrics


def test_accuracy_hand_computed():
    assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_macro_f1_hand_computed():
    # class 1: tp=2 fp=1 fn=1 -> F1 = 4/6; class 0: tp=0 fp=1 fn=1 -> F1 = 0; macro = 1/3
    assert metrics.macro_f1([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(1 / 3)
    assert metrics.macro_f1([0, 1], [0, 1]) == 1.0


def test_perplexity_pools_tokens_not_windows():
    # two windows: 3 tokens with total NLL 3, 1 token with NLL 3 -> exp(6/4), not mean of per-window ppl
    assert metrics.perplexity([3.0, 3.0], [3, 1]) == pytest.approx(math.exp(1.5))


def test_empty_inputs_are_refused():
    with pytest.raises(ValueError):
        metrics.accuracy([], [])
    with pytest.raises(ValueError):
        metrics.perplexity([0.0], [0])
