"""Result backends, chosen by URL scheme (``by_url``)."""
from __future__ import annotations

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
}


def by_url(app: Any, url: str | None) -> Backend:
    """The backend for ``url`` (``None``: results disabled). Unknown schemes raise
    ``ImproperlyConfigured`` naming the ones we know."""
    if not url:
        return DisabledBackend(app)
    scheme = url.partition('://')[0] if '://' in url else url
    target = SCHEMES.get(scheme.lower())
    if target is None:
        known = ', '.join(sorted(SCHEMES))
        raise ImproperlyConfigured(f'Unknown result backend {scheme!r} in {url!r}; known: {known}')
    module_name, _, class_name = target.partition(':')
    import importlib  # noqa: PLC0415 - deferred so unused backends' drivers are optional
    module = importlib.import_module(f'{__name__}.{module_name}')
    return getattr(module, class_name)(app, url if '://' in url else None)
