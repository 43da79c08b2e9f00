"""`ops/validation.py`: the one integer check every op, layer and the trainer use."""

import numpy as np
import pytest

from stn_keras.ops.validation import check_int


@pytest.mark.parametrize("value", [3, np.int64(3), np.int32(3), np.uint8(3)])
def test_python_and_numpy_integers_are_accepted_as_python_ints(value):
    result = check_int("steps", value, minimum=0)
    assert result == 3 and type(result) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, "3", None, -1, 11])
def test_bools_floats_strings_and_out_of_range_values_are_refused(value):
    with pytest.raises(ValueError, match=r"Invalid value for argument `steps`.*>= 0 and <= 10"):
        check_int("steps", value, minimum=0, maximum=10)
