"""``json.dumps`` for plain data written once per request, without its set-up cost.

``json.dumps()`` builds a new C encoder on every call (``JSONEncoder.iterencode``), and
for a small object that set-up is most of the work: a request head or a request log
line took ~5 us of which ~1 us was encoding (bench/run.py --cprofile). The encoders made
here are built once and write the same text as ``json.dumps`` with the same separators.
They skip the check for reference cycles, so they are for plain trees of dicts, lists,
tuples, strings and numbers, such as heads and log lines.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

__all__ = ["plain_encoder"]


def plain_encoder(*, item_separator: str = ", ", key_separator: str = ": ") -> Callable[[Any], str]:
    """An ``obj -> str`` that gives what ``json.dumps(obj, separators=(item, key))`` does."""
    fallback = json.JSONEncoder(separators=(item_separator, key_separator))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has the C encoder
        return fallback.encode
    chunks = make(
        None,  # markers: no check for cycles
        fallback.default,
        json.encoder.encode_basestring_ascii,
        None,  # indent
        key_separator,
        item_separator,
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )

    def encode(obj: Any) -> str:
        return "".join(chunks(obj, 0))

    return encode
