"""A run's parameters checked against its workflow's OpenAPI v3 schema, defaults filled in.

Values given as strings (``wpctl run -p count=3``) are converted to the declared scalar
type, so a command line never has to know the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workflowplane.runs.render import RenderError

_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


def resolve_parameters(schema: Mapping[str, Any] | None, given: Mapping[str, Any] | None) -> Any:
    return _value(
        dict(schema or {"type": "object"}), given if given is not None else {}, "parameters"
    )


def _value(schema: Mapping[str, Any], value: Any, where: str) -> Any:
    if value is None and "default" in schema:
        value = schema["default"]
    kind = schema.get("type")
    if kind == "object" or (kind is None and "properties" in schema):
        # An absent optional object still gets its defaults, but not its required checks.
        return _object(schema, value if value is not None else {}, where, value is not None)
    if value is None:
        return None
    if kind == "array":
        return _array(schema, value, where)
    value = _scalar(kind, value, where)
    allowed = schema.get("enum")
    if allowed is not None and value not in allowed:
        raise RenderError(f"{where}: {value!r} is not one of {allowed}")
    return value


def _object(schema: Mapping[str, Any], value: Any, where: str, present: bool) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise RenderError(f"{where}: expected an object, got {value!r}")
    properties: Mapping[str, Any] = schema.get("properties") or {}
    open_ended = schema.get("additionalProperties") not in (None, False) or (
        not properties and schema.get("x-kubernetes-preserve-unknown-fields", not properties)
    )
    unknown = sorted(set(value) - set(properties))
    if unknown and not open_ended:
        declared = ", ".join(sorted(properties)) or "none"
        raise RenderError(
            f"{where}: unknown parameter {', '.join(map(repr, unknown))} "
            f"(the workflow declares: {declared})"
        )
    missing = [
        key
        for key in (schema.get("required") or [] if present else [])
        if value.get(key) is None and "default" not in (properties.get(key) or {})
    ]
    if missing:
        raise RenderError(f"{where}: missing required parameter {', '.join(map(repr, missing))}")
    result = {key: value[key] for key in unknown}
    for key, sub_schema in properties.items():
        resolved = _value(sub_schema, value.get(key), f"{where}.{key}")
        if resolved is not None:
            result[key] = resolved
    return result


def _array(schema: Mapping[str, Any], value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RenderError(f"{where}: expected a list, got {value!r}")
    items = schema.get("items") or {}
    return [_value(items, item, f"{where}[{i}]") for i, item in enumerate(value)]


def _scalar(kind: Any, value: Any, where: str) -> Any:
    try:
        if kind == "integer":
            return _integer(value)
        if kind == "number":
            return _number(value)
        if kind == "boolean":
            return _boolean(value)
    except (TypeError, ValueError):
        raise RenderError(f"{where}: expected {kind}, got {value!r}") from None
    if kind == "string" and not isinstance(value, str):
        raise RenderError(f"{where}: expected string, got {value!r}")
    return value


def _integer(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _number(value: Any) -> float:
    """Always a float: CEL does not mix int and double, so one type whatever the input."""
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError(value)
