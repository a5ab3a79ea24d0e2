"""The prebuilt JSON encoders write exactly what ``json.dumps`` writes."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_client.protocol.jsontext import plain_encoder

SEPARATORS = [(", ", ": "), (",", ":")]

plain_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),  # any code point, lone surrogates included
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("separators", SEPARATORS)
@settings(max_examples=200, deadline=None)
@given(obj=plain_data)
def test_the_same_text_as_json_dumps(separators: tuple[str, str], obj: Any) -> None:
    encode = plain_encoder(item_separator=separators[0], key_separator=separators[1])
    assert encode(obj) == json.dumps(obj, separators=separators)


@pytest.mark.timeout(10)
def test_keys_that_are_not_strings_and_special_floats() -> None:
    encode = plain_encoder()
    obj = {1: "int", False: "bool", None: "none", 2.5: "float", "nan": math.nan, "inf": -math.inf}
    assert encode(obj) == json.dumps(obj)
    with pytest.raises(TypeError):
        encode({"not plain": object()})
