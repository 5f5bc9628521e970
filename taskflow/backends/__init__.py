"""Result backends, chosen by URL scheme (``by_url``)."""
from __future__ import annotations

import importlib
from typing import Any

from ..exceptions import ImproperlyConfigured
from .base import Backend, DisabledBackend

__all__ = ['Backend', 'DisabledBackend', 'by_url', 'SCHEMES']

#: URL scheme -> 'module:Class' within this package (imported on use: redis-py or SQLAlchemy
#: need only be installed when that backend is chosen).
SCHEMES = {
    'redis': 'redis:RedisBackend',
    'rediss': 'redis:RedisBackend',
    'redis+socket': 'redis:RedisBackend',
    'memory': 'memory:MemoryBackend',
    'cache+memory': 'memory:MemoryBackend',
    'disabled': 'base:DisabledBackend',
    'sqlite': 'sqlite:SQLiteBackend',
    'db+sqlite': 'database:DatabaseBackend',
    'db+postgresql': 'database:DatabaseBackend',
    'db+mysql': 'database:DatabaseBackend',
}
#: Any other ``db+<SQLAlchemy URL>`` (``db+mysql+pymysql://``, ``db+postgresql+psycopg2://``,
#: ``db+oracle://``, ...) goes to the SQLAlchemy backend too, as in Celery.
DATABASE_PREFIX = 'db+'
DATABASE_BACKEND = 'database:DatabaseBackend'


def by_url(app: Any, url: str | None) -> Backend:
    """The backend for ``url`` (``None``: results disabled). Unknown schemes raise
    ``ImproperlyConfigured`` naming the ones we know."""
    if not url:
        return DisabledBackend(app)
    scheme = url.partition('://')[0] if '://' in url else url
    target = SCHEMES.get(scheme.lower())
    if target is None and scheme.lower().startswith(DATABASE_PREFIX):
        target = DATABASE_BACKEND
    if target is None:
        known = ', '.join(sorted(SCHEMES))
        raise ImproperlyConfigured(f'Unknown result backend {scheme!r} in {url!r}; known: {known}')
    module_name, _, class_name = target.partition(':')
    module = importlib.import_module(f'{__name__}.{module_name}')
    return getattr(module, class_name)(app, url if '://' in url else None)
