"""The validation helpers: the message is built from the same bounds as the check; booleans are not numbers."""
import numpy as np
import pytest

from convfm.errors import ConfigError
from convfm.validate import check_bool, check_choice, check_int, check_int_list, check_number, check_text


@pytest.mark.parametrize("call, message", [
    (lambda: check_int(0, "n", 1, 8), r"^n: must be an integer in \[1, 8\], got 0$"),
    (lambda: check_int(True, "n", 0, 8), r"^n: must be an integer in \[0, 8\], got True$"),
    (lambda: check_int(2.0, "n", 1), r"^n: must be an integer >= 1, got 2\.0$"),
    (lambda: check_int("3", "n"),
     r"^n: must be an integer, got '3' \(a number in quotes is text: write it without quotes\)$"),
    (lambda: check_int(4, "k", 1, 15, odd=True), r"^k: must be an odd integer in \[1, 15\], got 4$"),
    (lambda: check_int(5, "grace", 1, 4, high_from="max_t"), r"^grace: must be an integer in \[1, max_t=4\], got 5$"),
    (lambda: check_number(0, "lr", 0, 1, low_open=True), r"^lr: must be a number in \(0, 1\], got 0$"),
    (lambda: check_number(1.0, "p", 0.0, 1.0, high_open=True), r"^p: must be a number in \[0, 1\), got 1\.0$"),
    (lambda: check_number(False, "p", 0, 1), r"^p: must be a number in \[0, 1\], got False$"),
    (lambda: check_number(float("nan"), "x"), r"^x: must be a finite number, got nan$"),
    (lambda: check_number(-1, "s", 0), r"^s: must be a number >= 0, got -1$"),
    (lambda: check_int_list([8, True], "dims", 1, 64), r"^dims: must be a non-empty list of integers in \[1, 64\]"),
    (lambda: check_int_list(64, "dims", 1, 64), r"^dims: must be a non-empty list of integers"),
    (lambda: check_choice("x", "mode", ("max", "min")), r"^mode: must be one of \['max', 'min'\], got 'x'$"),
    (lambda: check_bool(1, "flag"), r"^flag: must be true or false, got 1$"),
    (lambda: check_text("  ", "host", "a host name"), r"^host: must be a host name, got '  '$"),
])
def test_failures_name_the_field_the_range_and_the_value(call, message):
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert info.value.field == str(info.value).split(":")[0]  # lets the YAML loader find the key's line


def test_valid_values_come_back_as_python_numbers():
    assert check_int(np.int64(3), "n", 1, 8) == 3 and type(check_int(np.int64(3), "n")) is int
    assert check_number(np.float32(0.5), "p", 0, 1) == 0.5 and check_number(1, "p", 0, 1) == 1.0
    assert check_int_list([np.int32(4), 2], "dims", 1, 8) == (4, 2)
    assert check_bool(False, "flag") is False and check_choice("max", "mode", ("max", "min")) == "max"
