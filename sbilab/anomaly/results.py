"""JSON of the anomaly results: nested result dataclasses (an ABCD inference holds limit results) become dicts."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..stats.results import ResultBase, _plain

__all__ = ["NestedResult"]


def _nested(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _nested(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _nested(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nested(v) for v in value]
    return _plain(value)


class NestedResult(ResultBase):
    """Mixin: ``to_dict()`` that also converts result dataclasses nested in the fields (NaN becomes ``None``)."""

    def to_dict(self) -> dict[str, Any]:
        return _nested(self)
