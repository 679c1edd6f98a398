import pytest

from quantkit.errors import QuantkitError
from quantkit.evaluation.roofline import bound_tokens_per_s, fraction_of_bound


def test_fraction_of_bound_refuses_a_decode_faster_than_memory():
    bound = bound_tokens_per_s(20.0, 270e6, 15e3, 96)  # 20 GB/s, 270 MB of weights
    assert 70 < bound < 75
    assert fraction_of_bound(36.0, bound) == pytest.approx(36.0 / bound)
    with pytest.raises(QuantkitError, match="fraction of 97.6.*outside \\(0, 1\\]"):
        fraction_of_bound(97.6 * bound, bound)
    with pytest.raises(QuantkitError, match="no memory-bandwidth bound"):
        fraction_of_bound(10.0, 0.0)
