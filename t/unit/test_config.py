"""``taskflow.config``: defaults, attribute access, ``from_object``, unknown-key warnings,
environment overrides, masking, and ``Taskflow.config_from_envvar``."""
from __future__ import annotations

import json
import os
import sys
import types
import warnings
from datetime import timedelta
from pathlib import Path

import pytest

from taskflow.app import Taskflow
from taskflow.config import DEFAULTS, Option, Settings, find_option, mask_url, parse_env_value, seconds
from taskflow.exceptions import ImproperlyConfigured, TaskflowWarning

CELERY_DEFAULTS = json.loads((Path(__file__).resolve().parent / 'fixtures' / 'celery_defaults.json').read_text())


# --- defaults -----------------------------------------------------------------------------------
def test_every_default_is_present():
    conf = Settings(environ={})
    assert set(DEFAULTS) <= set(conf)
    for key, option in DEFAULTS.items():
        assert conf[key] == option.default, key


def test_options_are_documented_and_typed():
    for key, option in DEFAULTS.items():
        assert isinstance(option, Option)
        assert option.type in {'str', 'int', 'float', 'bool', 'dict', 'list', 'any'}, key
        assert option.doc and option.doc.strip() == option.doc, key
    assert find_option('broker_url') is DEFAULTS['broker_url']
    assert find_option('no_such_setting') is None


def test_mutable_defaults_are_copied_per_settings():
    a, b = Settings(environ={}), Settings(environ={})
    a.broker_transport_options['visibility_timeout'] = 10
    a.task_publish_retry_policy['max_retries'] = 99
    assert b.broker_transport_options == {}
    assert DEFAULTS['broker_transport_options'].default == {}
    assert b.task_publish_retry_policy['max_retries'] == 3


@pytest.mark.parametrize('key,value', [
    ('broker_url', None), ('result_backend', None), ('task_serializer', 'json'), ('result_serializer', 'json'),
    ('accept_content', ['json']), ('task_default_queue', 'celery'), ('task_acks_late', False),
    ('task_always_eager', False), ('worker_prefetch_multiplier', 4), ('task_protocol', 2),
    ('result_expires', timedelta(days=1)), ('enable_utc', True), ('task_create_missing_queues', True),
    ('control_exchange', 'celery'), ('event_exchange', 'celeryev'),
])
def test_celery_names_and_defaults(key, value):
    assert Settings(environ={})[key] == value


# Settings whose default differs from Celery 5.7's but means the same thing.
SAME_MEANING = {
    'task_default_delivery_mode': "'persistent' is what Celery's 2 means (kombu maps the name)",
    'broker_connection_retry_on_startup': "Celery's None falls back to broker_connection_retry (True)",
    'broker_failover_strategy': "Celery's None means kombu's 'round-robin'",
    'beat_scheduler': 'our own module path for the same scheduler',
    'worker_autoscaler': 'no autoscaler class to import until one exists',
    'database_table_names': "{} and Celery's None both mean the default table names",
    'database_table_schemas': "{} and Celery's None both mean no schema",
}
DIFFERENT: dict[str, str] = {}
SHARED = sorted(set(DEFAULTS) & set(CELERY_DEFAULTS['defaults']))


def _plain(value):
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, tuple):
        return list(value)
    return value


@pytest.mark.parametrize('key', [
    pytest.param(key, marks=pytest.mark.xfail(strict=True, reason=DIFFERENT[key])) if key in DIFFERENT else key
    for key in SHARED if key not in SAME_MEANING])
def test_defaults_match_celery_5_7(key):
    assert _plain(DEFAULTS[key].default) == CELERY_DEFAULTS['defaults'][key]


def test_same_meaning_list_is_current():
    for key in SAME_MEANING:
        assert key in SHARED
        assert _plain(DEFAULTS[key].default) != CELERY_DEFAULTS['defaults'][key], f'{key} now matches; drop it'


def test_most_settings_are_celery_names():
    ours_only = set(DEFAULTS) - set(CELERY_DEFAULTS['defaults'])
    assert len(ours_only) <= 10, sorted(ours_only)
    assert 'result_chord_join' in ours_only  # DESIGN §5: force polling joins


# --- access ---------------------------------------------------------------------------------------
def test_attribute_and_item_access():
    conf = Settings(environ={})
    conf.broker_url = 'memory://'
    assert conf['broker_url'] == 'memory://'
    conf['result_backend'] = 'memory://'
    assert conf.result_backend == 'memory://'
    with pytest.raises(AttributeError, match='no_such'):
        conf.no_such  # noqa: B018
    assert conf.get('no_such', 5) == 5


def test_values_given_at_construction():
    conf = Settings({'task_acks_late': True, 'worker_concurrency': 3}, environ={})
    assert conf.task_acks_late is True and conf.worker_concurrency == 3


def test_changes_and_first():
    conf = Settings({'task_acks_late': True}, environ={})
    assert conf.changes == {'task_acks_late': True}
    assert conf.first('broker_write_url', 'broker_url', 'task_default_queue') == 'celery'
    assert conf.first('broker_write_url') is None


def test_setdefault():
    conf = Settings(environ={})
    assert conf.setdefault('broker_url', 'memory://') is None  # present (its default), so kept
    assert conf.setdefault('my_own_value', 1) == 1
    assert conf.setdefault('my_own_value', 2) == 1


# --- from_object ------------------------------------------------------------------------------------
def _config_module(name: str, **values) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(values)
    return module


def test_from_object_module():
    module = _config_module('tf_conf_mod', broker_url='memory://', task_acks_late=True, _private=1,
                            helper=lambda: None, os=os, UPPER='ignored')
    conf = Settings(environ={})
    conf.from_object(module)
    assert conf.broker_url == 'memory://' and conf.task_acks_late is True
    assert '_private' not in conf and 'helper' not in conf and 'os' not in conf and 'UPPER' not in conf


def test_from_object_dict():
    conf = Settings(environ={})
    conf.from_object({'result_backend': 'memory://', 'task_default_queue': 'q'})
    assert conf.result_backend == 'memory://' and conf.task_default_queue == 'q'


def test_from_object_class():
    class Config:
        broker_url = 'memory://'
        task_routes = {'a.*': {'queue': 'a'}}
        worker_concurrency = 2

        def method(self):  # not a setting
            return 1

    conf = Settings(environ={})
    conf.from_object(Config)
    assert conf.broker_url == 'memory://' and conf.worker_concurrency == 2
    assert conf.task_routes == {'a.*': {'queue': 'a'}}
    assert 'method' not in conf


def test_callable_values_of_known_settings_are_kept():
    def router(name, *args, **kwargs):
        return None

    conf = Settings(environ={})
    conf.from_object({'task_routes': router})
    assert conf.task_routes is router


@pytest.mark.parametrize('suffix', ['', ':Config', '.Config'])
def test_from_object_import_path(monkeypatch, suffix):
    class Config:
        broker_url = 'memory://from-class'

    module = _config_module('tf_conf_path_mod', broker_url='memory://from-module', Config=Config)
    monkeypatch.setitem(sys.modules, 'tf_conf_path_mod', module)
    conf = Settings(environ={})
    conf.from_object('tf_conf_path_mod' + suffix)
    assert conf.broker_url == ('memory://from-module' if not suffix else 'memory://from-class')


def test_from_object_bad_path():
    conf = Settings(environ={})
    with pytest.raises(ImportError):
        conf.from_object('no_such_module_for_tf_tests')
    conf.from_object('no_such_module_for_tf_tests', silent=True)
    assert conf.broker_url is None


def test_from_object_namespace():
    module = _config_module('django_settings', CELERY_BROKER_URL='memory://', CELERY_TASK_ACKS_LATE=True,
                            DEBUG=True, broker_url='ignored://', CELERY_RESULT_BACKEND='memory://')
    conf = Settings(environ={})
    conf.from_object(module, namespace='CELERY')
    assert conf.broker_url == 'memory://' and conf.task_acks_late is True
    assert conf.result_backend == 'memory://'
    assert 'debug' not in conf and 'DEBUG' not in conf


def test_old_upper_case_names_are_not_silently_ignored():
    conf = Settings(environ={})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        conf.from_object({'BROKER_URL': 'redis://old-style/0'})
    assert conf.broker_url == 'redis://old-style/0' or any('BROKER_URL' in str(w.message) for w in caught)


def test_app_config_from_object_uses_the_app_namespace():
    app = Taskflow('t', set_as_current=False, namespace='CELERY')
    app.config_from_object({'CELERY_BROKER_URL': 'memory://ns', 'broker_url': 'memory://plain'})
    assert app.conf.broker_url == 'memory://ns'


def test_app_config_source():
    app = Taskflow('t', set_as_current=False, config_source={'task_default_queue': 'from-source'})
    assert app.conf.task_default_queue == 'from-source'


def test_app_arguments_are_settings():
    app = Taskflow('t', broker='memory://', backend='memory://', set_as_current=False, task_acks_late=True,
                   include=['a', 'b'])
    assert app.conf.broker_url == 'memory://' and app.conf.result_backend == 'memory://'
    assert app.conf.task_acks_late is True and app.conf.include == ('a', 'b')


def test_config_from_object_resets_the_backend():
    app = Taskflow('t', broker='memory://', backend='memory://', set_as_current=False)
    first = app.backend
    app.config_from_object({'result_expires': 10})
    assert app.backend is not first
    assert app.backend.expires == 10.0


# --- unknown keys -------------------------------------------------------------------------------------
def test_unknown_key_warns_with_a_suggestion():
    conf = Settings(environ={})
    with pytest.warns(TaskflowWarning, match=r"Unknown setting 'broker_ulr' \(did you mean 'broker_url'\?\)"):
        conf.update(broker_ulr='memory://')
    assert conf['broker_ulr'] == 'memory://'  # kept: the user may read it back


def test_unknown_key_from_object_warns():
    conf = Settings(environ={})
    with pytest.warns(TaskflowWarning, match='task_acks_lte'):
        conf.from_object({'task_acks_lte': True})


def test_unknown_key_without_close_match_warns_without_suggestion():
    conf = Settings(environ={})
    with pytest.warns(TaskflowWarning) as record:
        conf.update(worker_zzzzzzzzzzzzzzzz=1)
    assert 'did you mean' not in str(record[0].message)


def test_keys_outside_our_namespaces_do_not_warn():
    conf = Settings(environ={})
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        conf.update(my_own_value=1, broker_url='memory://')
        conf.from_object({'project_setting': 2})
    assert conf.my_own_value == 1


def test_unknown_key_warning_points_at_the_caller():
    conf = Settings(environ={})
    with pytest.warns(TaskflowWarning) as record:
        conf.update(broker_ulr='x')
    assert record[0].filename == __file__


# --- environment ----------------------------------------------------------------------------------------
def test_env_override_from_os_environ(monkeypatch):
    monkeypatch.setenv('TASKFLOW_BROKER_URL', 'redis://env-host/0')
    conf = Settings()
    assert conf.broker_url == 'redis://env-host/0'


@pytest.mark.parametrize('key,raw,expected', [
    ('task_acks_late', 'true', True), ('task_acks_late', 'YES', True), ('task_acks_late', '1', True),
    ('task_acks_late', 'off', False), ('task_acks_late', '0', False), ('task_acks_late', 'no', False),
    ('worker_concurrency', '8', 8), ('worker_concurrency', 'none', None),
    ('broker_connection_timeout', '2.5', 2.5), ('result_expires', '60', 60.0),
    ('accept_content', 'json, msgpack', ['json', 'msgpack']), ('accept_content', '["json","yaml"]', ['json', 'yaml']),
    ('broker_transport_options', '{"visibility_timeout": 10}', {'visibility_timeout': 10}),
    ('task_routes', '{"a.*": {"queue": "a"}}', {'a.*': {'queue': 'a'}}),
    ('broker_url', ' memory:// ', 'memory://'),
])
def test_env_values_are_parsed_by_type(key, raw, expected):
    assert parse_env_value(key, raw) == expected
    conf = Settings(environ={'TASKFLOW_' + key.upper(): raw})
    assert conf[key] == expected


@pytest.mark.parametrize('key,raw', [('task_acks_late', 'maybe'), ('worker_concurrency', 'many'),
                                     ('broker_connection_timeout', 'soon'), ('accept_content', '[json'),
                                     ('broker_transport_options', '{bad json}')])
def test_unreadable_env_values_raise(key, raw):
    with pytest.raises(ImproperlyConfigured, match=key):
        Settings(environ={'TASKFLOW_' + key.upper(): raw})


def test_non_json_dict_env_value_raises():
    with pytest.raises(ImproperlyConfigured):
        Settings(environ={'TASKFLOW_BROKER_TRANSPORT_OPTIONS': 'visibility_timeout=10'})


def test_celery_env_names(monkeypatch):
    conf = Settings(environ={'CELERY_BROKER_URL': 'redis://c/0', 'CELERY_RESULT_BACKEND': 'redis://c/1'})
    assert conf.broker_url == 'redis://c/0' and conf.result_backend == 'redis://c/1'
    conf = Settings(environ={'CELERY_BROKER_URL': 'redis://c/0', 'TASKFLOW_BROKER_URL': 'redis://t/0'})
    assert conf.broker_url == 'redis://t/0'  # ours wins over Celery's name
    conf = Settings(environ={'CELERY_BROKER_URL': ''})
    assert conf.broker_url is None


def test_env_beats_code_and_records_the_shadowed_value():
    conf = Settings({'broker_url': 'memory://code'}, environ={'TASKFLOW_BROKER_URL': 'redis://env/0'})
    assert conf.broker_url == 'redis://env/0'
    conf.broker_url = 'memory://later'
    conf.from_object({'broker_url': 'memory://object'})
    assert conf.broker_url == 'redis://env/0'
    assert conf.shadowed == {'broker_url': 'memory://object'}
    assert conf.env == {'broker_url': 'redis://env/0'}


def test_env_beats_app_arguments(monkeypatch):
    monkeypatch.setenv('TASKFLOW_BROKER_URL', 'memory://env')
    monkeypatch.setenv('CELERY_RESULT_BACKEND', 'memory://celery-env')
    app = Taskflow('t', broker='memory://arg', backend='memory://arg', set_as_current=False)
    assert app.conf.broker_url == 'memory://env'
    assert app.conf.result_backend == 'memory://celery-env'
    assert app.conf.shadowed['broker_url'] == 'memory://arg'


def test_unset_env_does_not_override():
    conf = Settings({'broker_url': 'memory://code'}, environ={'UNRELATED': 'x'})
    assert conf.broker_url == 'memory://code' and conf.env == {} and conf.shadowed == {}


# --- secrets and durations -------------------------------------------------------------------------
@pytest.mark.parametrize('url,masked', [
    ('redis://:secret@host:6379/0', 'redis://:**@host:6379/0'),
    ('amqp://guest:guest@localhost:5672//', 'amqp://guest:**@localhost:5672//'),
    ('redis://user@host/0', 'redis://user@host/0'),
    ('redis://host/0', 'redis://host/0'),
    ('memory://', 'memory://'),
    ('amqp://user:p@ss@host//', 'amqp://user:**@host//'),
    ('not a url', 'not a url'),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize('value,expected', [(None, None), (0, None), (10, 10.0), (2.5, 2.5),
                                            (timedelta(minutes=2), 120.0), (timedelta(0), None)])
def test_seconds(value, expected):
    assert seconds(value) == expected


def test_table_masks_urls_and_secrets():
    conf = Settings({'broker_url': 'redis://:pw@host/0', 'redis_password': 'hunter2',
                     'result_backend': 'redis://u:pw2@host/1', 'task_default_routing_key': 'rk',
                     'task_acks_late': True}, environ={})
    table = conf.table()
    assert table['broker_url'] == 'redis://:**@host/0'
    assert table['result_backend'] == 'redis://u:**@host/1'
    assert table['redis_password'] == '********'
    assert table['task_default_routing_key'] == 'rk'
    assert table['task_acks_late'] is True
    assert 'task_serializer' not in table  # unchanged defaults are left out
    assert 'pw' not in json.dumps(table, default=str).replace('password', '')
    assert conf.table(censored=False)['redis_password'] == 'hunter2'
    assert 'task_serializer' in conf.table(with_defaults=True)


def test_table_masks_secrets_inside_dicts():
    conf = Settings({'broker_transport_options': {'sentinel_kwargs': {'password': 'hunter2'}, 'master_name': 'm'}},
                    environ={})
    options = conf.table()['broker_transport_options']
    assert options['master_name'] == 'm'
    assert options['sentinel_kwargs']['password'] != 'hunter2'


def test_humanize_is_sorted_and_censored():
    conf = Settings({'broker_url': 'redis://:pw@host/0', 'task_acks_late': True}, environ={})
    text = conf.humanize()
    assert text.splitlines() == ["broker_url: 'redis://:**@host/0'", 'task_acks_late: True']
    assert 'hunter' not in conf.humanize(with_defaults=True)


def test_empty_secret_stays_empty():
    conf = Settings({'redis_password': ''}, environ={})
    assert conf.table()['redis_password'] == ''


# --- config_from_envvar ----------------------------------------------------------------------------
def test_config_from_envvar(monkeypatch):
    module = _config_module('tf_envvar_conf', task_default_queue='from-envvar')
    monkeypatch.setitem(sys.modules, 'tf_envvar_conf', module)
    monkeypatch.setenv('TF_TEST_CONFIG_MODULE', 'tf_envvar_conf')
    app = Taskflow('t', set_as_current=False)
    assert app.config_from_envvar('TF_TEST_CONFIG_MODULE') is True
    assert app.conf.task_default_queue == 'from-envvar'


def test_config_from_envvar_unset(monkeypatch):
    monkeypatch.delenv('TF_TEST_CONFIG_MODULE', raising=False)
    app = Taskflow('t', set_as_current=False)
    with pytest.raises(ImproperlyConfigured, match='TF_TEST_CONFIG_MODULE'):
        app.config_from_envvar('TF_TEST_CONFIG_MODULE')
    assert app.config_from_envvar('TF_TEST_CONFIG_MODULE', silent=True) is False


def test_config_from_envvar_bad_module(monkeypatch):
    monkeypatch.setenv('TF_TEST_CONFIG_MODULE', 'no_such_module_for_tf_tests')
    app = Taskflow('t', set_as_current=False)
    with pytest.raises(ImportError):
        app.config_from_envvar('TF_TEST_CONFIG_MODULE')
    assert app.config_from_envvar('TF_TEST_CONFIG_MODULE', silent=True) is True


# --- the embedded default ---------------------------------------------------------------------
@pytest.mark.parametrize('broker, backend, expected_broker, expected_backend', [
    (None, None, 'sqlite:///./taskflow.sqlite', 'sqlite:///./taskflow.sqlite'),   # nothing configured
    ('sqlite:///jobs.db', None, 'sqlite:///jobs.db', 'sqlite:///jobs.db'),          # results beside the queue
    ('sqlite:///jobs.db', 'redis://h/1', 'sqlite:///jobs.db', 'redis://h/1'),
    ('redis://h/0', None, 'redis://h/0', None),                                      # Celery: results disabled
    ('amqp://guest@h//', 'db+sqlite:///r.db', 'amqp://guest@h//', 'db+sqlite:///r.db'),
    (None, 'redis://h/1', 'sqlite:///./taskflow.sqlite', 'redis://h/1'),
])
def test_broker_and_backend_in_use(broker, backend, expected_broker, expected_backend):
    from taskflow.config import broker_url, result_backend_url
    conf = Settings({'broker_url': broker, 'result_backend': backend}, environ={})
    assert broker_url(conf) == expected_broker
    assert result_backend_url(conf) == expected_backend
    assert conf.broker_url == broker and conf.result_backend == backend  # the settings themselves stay as set


def test_unconfigured_app_uses_the_embedded_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ('TASKFLOW_BROKER_URL', 'TASKFLOW_RESULT_BACKEND', 'CELERY_BROKER_URL', 'CELERY_RESULT_BACKEND'):
        monkeypatch.delenv(name, raising=False)
    from taskflow import Taskflow
    app = Taskflow('embedded-default')

    @app.task
    def add(x, y):
        return x + y

    try:
        result = add.delay(1, 2)
        with app.connection_for_write() as conn:
            assert conn.transport_cls == 'sqlite'
        assert type(app.backend).__name__ == 'SQLiteBackend'
        app.backend.store_result(result.id, 3, 'SUCCESS')
        assert result.get(timeout=5) == 3
    finally:
        app.close()
    assert (tmp_path / 'taskflow.sqlite').exists()
