"""Converters from public datasets, as their authors distribute them, into the public layout.

``python -m training prepare NAME SRC DST``; NAME is one of :data:`CONVERTERS`. Each module's
docstring gives the source structure it reads and its split rule.
"""

from __future__ import annotations

from . import busbra, busi, ddti, generic, tn3k

#: converter name -> ``convert(src, dst, **options) -> dataset.json record``
CONVERTERS = {
    "busi": busi.convert,
    "bus-bra": busbra.convert,
    "tn3k": tn3k.convert,
    "ddti": ddti.convert,
    "generic": generic.convert,
}

__all__ = ["CONVERTERS"]
