"""Messages a worker must refuse: published raw with kombu to the module worker's queue, on Redis
and on RabbitMQ.

For each: exactly one error line naming the task id and the reason, the message is gone from the
broker (not requeued, not left unacknowledged to come back later) and the worker goes on serving.
"""
from __future__ import annotations

import subprocess
import uuid
from typing import Any, Callable

import pytest
import redis

from taskflow.protocol import task_message
from t.integration import tasks
from t.integration.conftest import (REDIS_BROKER_URL, VHOST, count_lines, queue_length, wait_for)

pytestmark = pytest.mark.integration


def good_message(task_id: str, name: str = 't.integration.tasks.add') -> tuple[dict, dict, Any]:
    headers, properties, body = task_message(name, task_id, (2, 2))
    return headers, properties, body


def publish_raw(queue: str, body: Any, headers: dict[str, Any], properties: dict[str, Any], *,
                serializer: str | None = 'json', content_type: str | None = None,
                content_encoding: str | None = None) -> None:
    """Publish through the default exchange to ``queue``, exactly as given (no taskflow code)."""
    with tasks.app.connection() as conn:
        producer = conn.Producer()
        options: dict[str, Any] = {'serializer': serializer}
        if content_type is not None:  # a str/bytes body with a content type is sent as it is
            options = {'content_type': content_type, 'content_encoding': content_encoding or 'utf-8'}
        producer.publish(body, exchange='', routing_key=queue, headers=headers,
                         retry=True, **options, **properties)


def messages_in_broker(broker: str, queue: str, task_id: str) -> int:
    """Messages of ``queue`` the broker still holds, ready or unacknowledged."""
    if broker == 'amqp':
        out = subprocess.run(['rabbitmqctl', 'list_queues', '-p', VHOST, '-q', '--no-table-headers',
                              'name', 'messages'], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        counts = [int(row.split()[1]) for row in out.splitlines() if row.split()[:1] == [queue]]
        assert counts, f'queue {queue} not found in vhost {VHOST}:\n{out}'
        return counts[0]
    client = redis.Redis.from_url(REDIS_BROKER_URL)
    try:  # kombu keeps delivered, unacknowledged messages in the 'unacked' hash
        unacked = sum(task_id.encode() in value for value in client.hvals('unacked'))
    finally:
        client.close()
    return queue_length(queue) + unacked


# Each case: (publish(queue, task_id), text the error line must contain besides the id)
def _unknown_task(queue: str, task_id: str) -> None:
    headers, properties, body = good_message(task_id, 't.integration.tasks.no_such_task')
    publish_raw(queue, body, headers, properties)


def _bad_json(queue: str, task_id: str) -> None:
    headers, properties, _ = good_message(task_id)
    publish_raw(queue, b'[[2, 2], {}, {"callbacks": ', headers, properties,
                content_type='application/json', content_encoding='utf-8')


def _pickle(queue: str, task_id: str) -> None:
    headers, properties, body = good_message(task_id)
    publish_raw(queue, body, headers, properties, serializer='pickle')


def _missing_id(queue: str, task_id: str) -> None:
    headers, properties, body = good_message(task_id)
    del headers['id']  # correlation_id still carries the id
    publish_raw(queue, body, headers, properties)


def _missing_task_name(queue: str, task_id: str) -> None:
    headers, properties, body = good_message(task_id)
    del headers['task']
    publish_raw(queue, body, headers, properties)


def _body(bad_body: Any) -> Callable[[str, str], None]:
    def publish(queue: str, task_id: str) -> None:
        headers, properties, _ = good_message(task_id)
        publish_raw(queue, bad_body, headers, properties)
    return publish


CASES = {
    'unknown-task': (_unknown_task, "unregistered task of type 't.integration.tasks.no_such_task'"),
    'unparsable-json': (_bad_json, 'DecodeError'),
    'pickle-not-accepted': (_pickle, 'ContentDisallowed'),
    'missing-id-header': (_missing_id, 'missing header(s) id'),
    'missing-task-header': (_missing_task_name, 'no task name'),
    'body-is-a-dict': (_body({'args': [2, 2], 'kwargs': {}}), 'body is not [args, kwargs, embed]'),
    'body-has-two-items': (_body([[2, 2], {}]), 'body is not [args, kwargs, embed]'),
    'body-args-not-a-list': (_body([2, 2, {}]), 'args must be a list'),
    'body-embed-not-a-dict': (_body([[2, 2], {}, 'callbacks']), 'InvalidTaskError'),
}

@pytest.mark.parametrize('case', list(CASES))
def test_bad_message_refused_once(broker, worker, queue_name, case):
    publish, reason = CASES[case]
    task_id = str(uuid.uuid4())
    publish(queue_name, task_id)
    line = wait_for(lambda: [ln for ln in worker.log().splitlines() if task_id in ln], timeout=10,
                    message='the error line')[0]
    assert 'ERROR' in line, line
    # round trips behind it: the worker serves, and a requeued message would have come back
    for x in range(2):
        assert tasks.add.delay(x, 1).get(timeout=10) == x + 1
    wait_for(lambda: messages_in_broker(broker, queue_name, task_id) == 0, timeout=10,
             message='the broker to hold no message of this queue')
    log = worker.log()
    assert count_lines(log, task_id) == 1, log[-3000:]
    assert 'Traceback' not in log[log.index(line):]
    assert tasks.app.AsyncResult(task_id).state == 'PENDING'  # nothing ran, nothing stored
    assert reason in line, line
