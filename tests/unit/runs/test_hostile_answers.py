"""The plane's answers become errors the run shows (its conditions) and the log repeats on
every retry: bounded, and readable whatever the body."""

from __future__ import annotations

import json

from workflowplane.protocol.gateway_client import ProxyResponse
from workflowplane.runs.plane_api import MAX_ANSWER_MESSAGE_CHARS, request_error


def test_a_huge_message_from_the_plane_is_bounded_in_the_error() -> None:
    """Before: a 1 MB message was carried whole, into every retry's log line."""
    body = json.dumps({"message": "x" * 1_000_000}).encode()
    error = request_error(ProxyResponse(422, {}, body), "create ConfigMap c")
    assert len(error.message) < MAX_ANSWER_MESSAGE_CHARS + 100
    assert error.message.startswith("create ConfigMap c: HTTP 422: xxx")


def test_a_json_body_without_a_message_is_shown_as_text_not_as_bytes() -> None:
    """Before: ``HTTP 502: b'{"reason": "x"}'``, Python's repr of the bytes."""
    error = request_error(ProxyResponse(502, {}, b'{"reason": "x"}'), "get Workflow r")
    assert error.message == 'get Workflow r: HTTP 502: {"reason": "x"}'


def test_a_message_that_is_not_text_is_shown_as_text() -> None:
    error = request_error(ProxyResponse(400, {}, b'{"message": {"a": 1}}'), "create X x")
    assert error.message == "create X x: HTTP 400: {'a': 1}"
