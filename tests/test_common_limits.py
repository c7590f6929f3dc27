"""The one policy for untrusted files (common/limits.py) and bounded JSON (common/safe_json.py)."""
import argparse
import json

import pytest

from common import limits as L
from common import safe_json


def test_defaults_admit_the_biggest_real_model_and_refuse_beyond():
    lim = L.Limits()
    # RepVGG-B3 at 320x320 (train form): ~123 M params, ~27 GMACs, tens of MB per image
    lim.check("b3.onnx", weights=123e6 * 4, activations=60 << 20, macs=27e9, batch=16)
    with pytest.raises(L.LimitError, match="--max-gmacs"):
        lim.check("m.bnn", macs=1e13)
    with pytest.raises(L.LimitError, match="--max-memory"):
        lim.check("m.bnn", weights=1 << 20, activations=1 << 30, batch=4)
    with pytest.raises(L.LimitError, match="--max-batch"):
        lim.check("m.onnx", batch=10 ** 15)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1, "3", True])
def test_malformed_counts_are_refused_not_compared(bad):
    with pytest.raises(L.LimitError, match="malformed"):
        L.Limits().check("m.onnx", macs=bad)


def test_pixels_and_flags():
    lim = L.Limits()
    lim.check_pixels("a.png", 7000, 7000)
    with pytest.raises(L.LimitError, match="169 megapixels"):
        lim.check_pixels("a.png", 13000, 13000)
    p = argparse.ArgumentParser()
    L.add_arguments(p)
    raised = L.from_args(p.parse_args(["--max-memory", "6G", "--max-gmacs", "500",
                                       "--max-megapixels", "200"]))
    assert raised.max_memory == 6 << 30 and raised.max_gmacs == 500
    raised.check_pixels("a.png", 13000, 13000)
    assert L.from_args(p.parse_args([])) == L.Limits()
    assert L.parse_size("512M") == 512 << 20 and L.parse_size("2GiB") == 2 << 30
    for bad in ("0", "-1G", "lots", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            L.parse_size(bad)


def test_bounded_json_refuses_in_one_value_error():
    assert safe_json.loads('{"a": [1, 2.5, "x"]}') == {"a": [1, 2.5, "x"]}
    assert safe_json.loads(b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')["s"].startswith("[")
    cases = ["[" * 100000 + "]" * 100000, '{"a": NaN}', '{"a": Infinity}', '{"a": 1e999}',
             '{"a": ' + "9" * 5000 + "}", "{", b"\xff\xfe"]
    for text in cases:
        with pytest.raises(ValueError) as e:
            safe_json.loads(text, "the header")
        assert "the header" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(RecursionError):  # what the plain parser does with the first case
        json.loads(cases[0])
