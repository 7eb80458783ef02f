"""kopf's per-event "Handler … succeeded." INFO lines are not written (our handlers only
enqueue); its warnings are, and --verbose (DEBUG) keeps everything."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from workflowplane.controller.runner import quiet_handler_successes


@pytest.fixture
def levels() -> Iterator[None]:
    root, objects = logging.getLogger(), logging.getLogger("kopf.objects")
    saved = root.level, objects.level
    yield
    root.setLevel(saved[0])
    objects.setLevel(saved[1])


def test_handler_successes_are_not_logged_but_warnings_are(levels: None) -> None:
    logging.getLogger().setLevel(logging.INFO)
    quiet_handler_successes()
    objects = logging.getLogger("kopf.objects")
    assert not objects.isEnabledFor(logging.INFO) and objects.isEnabledFor(logging.WARNING)


def test_verbose_keeps_every_line(levels: None) -> None:
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("kopf.objects").setLevel(logging.NOTSET)
    quiet_handler_successes()
    assert logging.getLogger("kopf.objects").isEnabledFor(logging.INFO)
