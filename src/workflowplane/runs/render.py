"""Render a workflow definition for one run: parameter defaults, then ``${...}`` CEL.

A string that is exactly one ``${expr}`` takes the expression's value with its type (so a
number stays a number); otherwise each ``${expr}`` is replaced by its text. ``$${`` writes a
literal ``${``. Every failure is a :class:`RenderError` that names where and which expression,
because a render error is permanent and the user must be able to fix it from the message.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cel

# workflowplane.secretStore or workflowplane["secretStore"], however spaced.
SECRET_STORE_REFERENCE = re.compile(
    r"\bworkflowplane\s*(?:\.\s*secretStore\b|\[\s*[\'\"]secretStore[\'\"]\s*\])"
)


# Budgets for tenant-written expressions. Size is checked here; evaluation time and memory
# are bounded by running the whole render in a worker process (``kits.workers``).
MAX_EXPRESSION_CHARS = 2048


class RenderError(Exception):
    """The definition cannot be rendered for this run; retrying will not help."""


class SecretStoreMissing(RenderError):
    """The definition needs the plane's secret store and the plane has none."""


@dataclass(frozen=True)
class RunContext:
    namespace: str
    run_name: str
    labels: Mapping[str, str]
    parameters: Mapping[str, Any]
    plane_id: str
    secret_store: str

    def variables(self) -> dict[str, Any]:
        return {
            "metadata": {
                "namespaceName": self.namespace,
                "workflowRunName": self.run_name,
                "namespace": f"workflows-{self.namespace}",
                "labels": dict(self.labels),
            },
            "parameters": dict(self.parameters),
            "workflowplane": {"secretStore": self.secret_store, "planeID": self.plane_id},
        }


@functools.lru_cache(maxsize=1024)
def _compiled(expression: str) -> Any:
    return cel.compile(expression)


def evaluate(expression: str, variables: Mapping[str, Any], where: str) -> Any:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise RenderError(
            f"{where}: an expression of {len(expression)} characters is over the limit of "
            f"{MAX_EXPRESSION_CHARS}"
        )
    try:
        program = _compiled(expression)
    except ValueError as exc:
        reason = _first_line(exc)
        raise RenderError(f"{where}: ${{{expression}}} is not valid CEL: {reason}") from exc
    try:
        return program.execute(dict(variables))
    except KeyError as exc:
        raise RenderError(f"{where}: ${{{expression}}}: no such key {exc}") from exc
    except (TypeError, ValueError, RuntimeError, LookupError, ArithmeticError) as exc:
        # what the CEL runtime raises for a type mismatch, a bad conversion, an index or
        # key out of range, division by zero or overflow
        raise RenderError(f"{where}: ${{{expression}}}: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def split_template(text: str, where: str) -> list[str | tuple[str]]:
    """Literal pieces and ``(expression,)`` pieces of one string, in order."""
    pieces: list[str | tuple[str]] = []
    literal: list[str] = []
    index = 0
    while index < len(text):
        if text.startswith("$${", index):
            literal.append("${")
            index += 3
        elif text.startswith("${", index):
            end = _closing_brace(text, index + 2, where)
            pieces.extend(["".join(literal), (text[index + 2 : end].strip(),)])
            literal = []
            index = end + 1
        else:
            literal.append(text[index])
            index += 1
    pieces.append("".join(literal))
    return [p for p in pieces if p != ""]


def _closing_brace(text: str, start: int, where: str) -> int:
    depth, quote, index = 0, "", start
    while index < len(text):
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return index
            depth -= 1
        index += 1
    raise RenderError(f"{where}: unterminated ${{ in {text!r}")


class Renderer:
    def __init__(self, context: RunContext, needs_store_hint: str) -> None:
        self._variables = context.variables()
        self._has_store = bool(context.secret_store)
        self._needs_store_hint = needs_store_hint

    def value(self, expression: str, where: str) -> Any:
        if not self._has_store and SECRET_STORE_REFERENCE.search(expression):
            raise SecretStoreMissing(
                f"{where}: ${{{expression}}} needs the plane's secret store, "
                f"but {self._needs_store_hint}"
            )
        return evaluate(expression, self._variables, where)

    def render(self, template: Any, where: str) -> Any:
        if isinstance(template, str):
            return self._string(template, where)
        if isinstance(template, Mapping):
            return {key: self.render(value, f"{where}.{key}") for key, value in template.items()}
        if isinstance(template, list):
            return [self.render(item, f"{where}[{i}]") for i, item in enumerate(template)]
        return template

    def condition(self, text: str, where: str) -> bool:
        """``includeWhen``: one expression (with or without ``${}``) that must give a bool."""
        pieces = split_template(text.strip(), where)
        if len(pieces) == 1 and isinstance(pieces[0], tuple):
            expression = pieces[0][0]
        elif "${" in text:
            raise RenderError(
                f"{where}: {text!r} must be one ${{...}} expression "
                "(combine conditions inside it: ${a && b})"
            )
        else:
            expression = text
        result = self.value(expression, where)
        if not isinstance(result, bool):
            raise RenderError(f"{where}: ${{{expression}}} must be true or false, got {result!r}")
        return result

    def _string(self, text: str, where: str) -> Any:
        pieces = split_template(text, where)
        if len(pieces) == 1 and isinstance(pieces[0], tuple):
            return self.value(pieces[0][0], where)
        return "".join(
            piece if isinstance(piece, str) else _as_text(self.value(piece[0], where))
            for piece in pieces
        )


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)
