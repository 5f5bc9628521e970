"""The ``taskflow`` command line through click's ``CliRunner`` (no subprocess, no network): the
app is ``t/unit/cli_app.py`` on ``memory://``."""
from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from click.testing import CliRunner, Result

from taskflow import __version__
from taskflow.cli import cli, load_app, main
from taskflow.exceptions import AppLoadError
from t.unit import cli_app

APP = 't.unit.cli_app'
UUID_RE = re.compile(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}')


@pytest.fixture(autouse=True)
def _restore_cli_app_urls():
    """The CLI's -b/--result-backend options write into the shared test app's settings."""
    broker, backend = cli_app.app.conf.broker_url, cli_app.app.conf.result_backend
    yield
    cli_app.app.conf.broker_url, cli_app.app.conf.result_backend = broker, backend
    cli_app.app.config_from_object({})  # drop pools and backend made with other settings


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name='taskflow')


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith('Error:')]


def _receive(queue_name: str) -> Any:
    with cli_app.app.connection() as connection:
        queue = cli_app.app.broker.queues[queue_name](connection.default_channel)
        queue.declare()
        return queue.get(no_ack=True)


def test_version():
    result = run('--version')
    assert result.exit_code == 0
    assert result.output == f'taskflow {__version__}\n'


def test_help_lists_the_verbs():
    result = run('--help')
    assert result.exit_code == 0
    assert result.output.startswith('Usage: taskflow [OPTIONS] COMMAND [ARGS]...')
    for verb in ('worker', 'call', 'result', 'purge', 'inspect', 'control', 'status', 'events'):
        assert re.search(rf'^\s+{verb}\s', result.output, re.M), verb
    assert '-A, --app' in result.output
    assert run('-h').output == result.output


def test_verb_help():
    result = run('call', '--help')
    assert result.exit_code == 0 and '--args' in result.output and '-A, --app' in result.output


@pytest.mark.parametrize('path', ['no_such_module_for_tf', 't.unit.no_such_module:app', 'os:no_such_attr',
                                  'json', f'{APP}.no_such_attr', f'{APP}:no_such_attr'])
def test_bad_app_path_is_one_error_line(path):
    result = run('-A', path, 'call', 'proj.add')
    assert result.exit_code == 1
    assert len(error_lines(result)) == 1
    assert result.output.splitlines() == error_lines(result)
    assert result.output.startswith(f"Error: Unable to load app '{path}'")
    assert 'Traceback' not in result.output


def test_bad_app_path_after_the_verb():
    result = run('call', '-A', 'no_such_module_for_tf', 'proj.add')
    assert result.exit_code == 1 and len(error_lines(result)) == 1


def test_app_before_the_verb():
    queue = f'tf-cli-{uuid.uuid4()}'
    result = run('-A', APP, 'call', 'proj.add', '--args', '[2, 2]', '--queue', queue)
    assert result.exit_code == 0, result.output
    assert UUID_RE.fullmatch(result.output.strip())
    assert _receive(queue).headers['id'] == result.output.strip()


def test_app_after_the_verb():
    queue = f'tf-cli-{uuid.uuid4()}'
    result = run('call', '-A', APP, 'proj.add', '--queue', queue)
    assert result.exit_code == 0, result.output
    assert _receive(queue).headers['id'] == result.output.strip()


def test_app_after_the_verb_wins():
    result = run('-A', 'no_such_module_for_tf', 'call', '-A', APP, 'proj.add', '--queue', f'tf-cli-{uuid.uuid4()}')
    assert result.exit_code == 0, result.output


def test_app_from_environment(monkeypatch):
    monkeypatch.setenv('TASKFLOW_APP', APP)
    result = run('call', 'proj.add', '--queue', f'tf-cli-{uuid.uuid4()}')
    assert result.exit_code == 0 and UUID_RE.fullmatch(result.output.strip())


def test_call_sends_the_message():
    queue = f'tf-cli-{uuid.uuid4()}'
    result = run('-A', APP, 'call', 't.unit.cli_app.add', '--args', '[1, 2]', '--kwargs', '{}',
                 '--queue', queue, '--countdown', '10', '--expires', '60')
    assert result.exit_code == 0, result.output
    task_id = result.output.strip()
    assert UUID_RE.fullmatch(task_id)
    message = _receive(queue)
    assert message.headers['task'] == 't.unit.cli_app.add' and message.headers['id'] == task_id
    assert message.headers['eta'] is not None and message.headers['expires'] is not None
    args, kwargs, _ = message.decode()
    assert args == [1, 2] and kwargs == {}


@pytest.mark.parametrize('option,value,fragment', [
    ('--args', '[1,', 'not valid JSON'),
    ('--args', '{"x": 1}', 'must be a JSON list'),
    ('--kwargs', '[1]', 'must be a JSON dict'),
    ('--kwargs', 'x=1', 'not valid JSON'),
])
def test_call_with_bad_json(option, value, fragment):
    result = run('-A', APP, 'call', 'proj.add', option, value)
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(error_lines(result)) == 1
    assert option in error_lines(result)[0] and fragment in error_lines(result)[0]
    assert 'Traceback' not in result.output


def test_call_with_an_unusable_broker_is_one_error_line():
    cli_app.app.config_from_object({})  # a fresh process has no producer pool yet
    result = run('-A', APP, '--broker', 'nosuchtransport://x', 'call', 'proj.add')
    assert result.exit_code == 1, result.output
    assert len(error_lines(result)) == 1 and error_lines(result)[0].startswith('Error: Could not send proj.add')


def test_result_prints_the_value():
    cli_app.app.backend.mark_as_done('cli-result-id', {'answer': 42})
    result = run('-A', APP, 'result', 'cli-result-id', '--timeout', '1')
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {'answer': 42}


def test_result_of_a_failure():
    cli_app.app.backend.mark_as_failure('cli-failed-id', ValueError('nope'), 'Traceback (most recent call last):\nX')
    plain = run('-A', APP, 'result', 'cli-failed-id', '--timeout', '1')
    assert plain.exit_code == 0 and plain.output.strip() == "ValueError('nope')"
    with_tb = run('-A', APP, 'result', 'cli-failed-id', '--traceback', '--timeout', '1')
    assert with_tb.output.startswith('Traceback (most recent call last):')


def test_result_timeout_is_one_error_line():
    result = run('-A', APP, 'result', 'never-stored', '--timeout', '0.05')
    assert result.exit_code == 1
    assert result.output == 'Error: No result for never-stored within 0.05s (state PENDING)\n'


def test_result_without_a_backend_is_one_error_line():
    cli_app.app.conf.result_backend = None
    cli_app.app.config_from_object({})  # forget the memory backend
    try:
        result = run('-A', APP, 'result', 'x', '--timeout', '0.05')
    finally:
        cli_app.app.conf.result_backend = 'memory://'
        cli_app.app.config_from_object({})
    assert result.exit_code == 1 and len(error_lines(result)) == 1
    assert 'No result backend is configured' in result.output


def test_status_without_workers():
    result = run('-A', APP, 'status', '--timeout', '0.05')
    assert result.exit_code == 1
    assert result.output == 'Error: No nodes replied within time constraint\n'


def test_purge():
    queue = f'tf-cli-{uuid.uuid4()}'
    assert run('-A', APP, 'call', 'proj.add', '--queue', queue).exit_code == 0
    assert run('-A', APP, 'call', 'proj.add', '--queue', queue).exit_code == 0
    result = run('-A', APP, 'purge', '-f', '-Q', queue)
    assert result.exit_code == 0, result.output
    assert result.output == f'Purged 2 messages from {queue}.\n'
    assert _receive(queue) is None


def test_purge_asks_first():
    queue = f'tf-cli-{uuid.uuid4()}'
    run('-A', APP, 'call', 'proj.add', '--queue', queue)
    result = CliRunner().invoke(cli, ['-A', APP, 'purge', '-Q', queue], input='n\n', prog_name='taskflow')
    assert result.exit_code == 1 and 'Aborted' in result.output
    assert _receive(queue) is not None


def test_main_with_a_preset_app(capsys):
    queue = f'tf-cli-{uuid.uuid4()}'
    with pytest.raises(SystemExit) as info:
        main(['call', 'proj.add', '--queue', queue], app=cli_app.app)
    assert info.value.code == 0
    assert _receive(queue).headers['id'] == capsys.readouterr().out.strip()


@pytest.mark.parametrize('path', [APP, f'{APP}:app', f'{APP}.app'])
def test_load_app(path):
    assert load_app(path) is cli_app.app


def test_load_app_error_type():
    with pytest.raises(AppLoadError, match='no taskflow app found'):
        load_app('json')
