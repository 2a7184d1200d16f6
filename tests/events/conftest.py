"""Fixtures for the event tests: a webhook retry schedule short enough not to wait out."""

from __future__ import annotations

import pytest

from gateway.events import webhooks as notify

# Seconds before a failed webhook POST's first retry, and the longest wait between two
# tries, in tests that wait for retries (the shipped schedule, 1 s doubling to 10 min, is
# checked by test_notify.py and test_webhook_delivery.py on a fake clock).
TEST_RETRY_FIRST = 0.05
TEST_RETRY_MAX = 0.2


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry failed webhook POSTs after TEST_RETRY_FIRST doubling to TEST_RETRY_MAX."""
    monkeypatch.setattr(notify, "RETRY_FIRST", TEST_RETRY_FIRST)
    monkeypatch.setattr(notify, "RETRY_MAX", TEST_RETRY_MAX)
