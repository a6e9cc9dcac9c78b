"""The limits on untrusted JSON: what json_loads refuses, and that it parses the rest as json."""

from __future__ import annotations

import json

import pytest

from fedsim.core.limits import MAX_JSON_DEPTH, json_loads


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"a": 1, "a": 2}', "key 'a' appears twice"),
        ('{"x": 1e999}', "x: number out of range"),
        ('{"x": NaN}', "NaN is not JSON"),
        ('{"x": 18446744073709551616}', "x: integer out of range"),
        ('{"d": "a\\u0000b"}', "d: control characters"),
        ('{"a\\u001fb": 1}', "control characters"),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), f"deeper than {MAX_JSON_DEPTH}"),
        ('{"id": ' + "[" * 50_000 + "]" * 50_000 + "}", f"deeper than {MAX_JSON_DEPTH}"),
    ],
)
def test_json_beyond_the_limits_is_refused_naming_where(text, words):
    with pytest.raises(ValueError, match=words):
        json_loads(text)


def test_json_within_the_limits_parses_as_json_does():
    # Prepare: as deep as allowed, with tab and newline, the largest integers, a float
    doc = {"t": "a\tb\nc", "big": 2**63 - 1, "neg": -(2**63 - 1), "f": 1.5e300}
    nested: object = doc
    for _ in range(MAX_JSON_DEPTH - 1):
        nested = [nested]
    text = json.dumps(nested)

    # Execute / Assert
    assert json_loads(text) == json.loads(text)
