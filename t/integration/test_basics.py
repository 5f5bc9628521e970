"""Calling and results with a real worker, on Redis and on RabbitMQ."""
from __future__ import annotations

import pytest

from t.integration import tasks

pytestmark = pytest.mark.integration


def test_delay_and_get(broker, worker):
    assert tasks.add.delay(2, 2).get(timeout=10) == 4


def test_failure_reraises_original_type(broker, worker):
    result = tasks.fail.delay('boom')
    with pytest.raises(ValueError, match='boom'):
        result.get(timeout=10)
    assert result.state == 'FAILURE'
    assert result.failed()
    assert 'ValueError' in result.traceback
