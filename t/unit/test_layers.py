"""The import layers of DESIGN.md §2: a module imports only from lower layers.

Every module in ``taskflow/`` is parsed with ``ast`` (nothing is imported). Module-level imports
(outside ``if TYPE_CHECKING:``) must go to a lower layer, or to a same-layer module listed in
``SAME_LAYER`` with the reason DESIGN gives. Imports of taskflow modules inside functions must
be listed in ``DEFERRED_BY_DESIGN`` (with a reason); the ones found today that are not are in
``KNOWN_VIOLATIONS`` and run as strict xfails until fixed.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import taskflow

PACKAGE_DIR = Path(taskflow.__file__).resolve().parent
TOP = 99  # __init__ and __main__: above every layer, imported by nobody inside the package

#: DESIGN.md §2, "Layers". Subpackages take the layer of their package.
LAYERS: dict[str, int] = {
    '_version': 0, '_state': 0, 'exceptions': 0, 'states': 0, 'signals': 0, 'config': 0, 'schedules': 0, 'log': 0,
    'protocol': 1,
    'result': 2, 'backends': 2, 'transports': 2,
    'canvas': 3,
    'tracer': 4,
    'task': 5,
    'broker': 6, 'pools': 6,
    'app': 7, 'control': 7, 'events': 7,
    'worker': 8, 'beat': 8, 'bulk': 8,
    'cli': 9, 'contrib': 9,
    '__init__': TOP, '__main__': TOP,
}

#: Same-layer imports DESIGN implies, (importer, imported) -> reason. Modules of one subpackage
#: (``backends/*``, ``transports/*``) may always import each other. A pair names top-level modules
#: or packages, or two single modules of subpackages (then only those two, not their packages).
SAME_LAYER: dict[tuple[str, str], str] = {
    ('config', 'exceptions'): 'exceptions is the error tree every module raises from; config raises '
                              'ImproperlyConfigured and warns with TaskflowWarning',
    ('log', '_state'): 'task log records carry the current task id and name (DESIGN: log)',
    ('log', 'signals'): 'logging set-up sends the Celery-named setup_logging signals',
    ('app', 'control'): 'DESIGN: app.py owns app.control',
    ('app', 'events'): 'DESIGN: app.py owns app.events',
    # one module pair only: backends and transports stay apart otherwise
    ('backends.sqlite', 'transports.sqlite'): 'the embedded result store uses the embedded broker\'s '
                                              'SQLiteFile (per-thread connections, fork safety), often '
                                              'on the same file, rather than a copy of it',
    ('backends.redis', 'transports.redis'): 'the result store and the broker\'s publish write their '
                                            'commands in one round trip with one helper (send_commands)',
}

#: Imports of taskflow modules inside functions that are deferred by design:
#: (importing module, function qualname, imported module) -> reason.
DEFERRED_BY_DESIGN: dict[tuple[str, str, str], str] = {
    ('_state', 'get_current_app', 'app'): 'the default app is made on first use when none was ever '
                                           'created; _state (L0) cannot import app (L7) at load time',
    ('app', 'Taskflow.start', 'cli'): 'app.start() runs the command line; the CLI (L9) is above the app',
}

#: Function-level imports found that are not deferred by design, by (importing module, imported
#: module) -> reason. Each runs as a strict xfail; fix the imports and delete the entry.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}

#: Module-level imports found that break the layers. Each runs as a strict xfail.
KNOWN_MODULE_VIOLATIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str   # 'cli', 'backends.base', '__init__'
    imported: str   # same form
    function: str | None  # qualname of the enclosing function, None at module level
    line: int

    def __str__(self) -> str:
        where = f' in {self.function}()' if self.function else ''
        return f'taskflow/{self.importer.replace(".", "/")}.py:{self.line}{where} imports {self.imported}'


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR).with_suffix('')
    parts = list(rel.parts)
    if parts[-1] == '__init__' and len(parts) > 1:
        parts.pop()
    return '.'.join(parts)


def _is_module(dotted: str) -> bool:
    base = PACKAGE_DIR.joinpath(*dotted.split('.'))
    return base.with_suffix('.py').exists() or (base / '__init__.py').exists()


def _package_of(name: str, path: Path) -> list[str]:
    parts = name.split('.') if name not in ('__init__', '__main__') else []
    return parts if path.name == '__init__.py' else parts[:-1]


def _targets(node: ast.Import | ast.ImportFrom, name: str, path: Path) -> list[str]:
    """The taskflow modules an import statement loads (package-relative dotted names)."""
    if isinstance(node, ast.Import):
        found = []
        for alias in node.names:
            if alias.name == 'taskflow':
                found.append('__init__')
            elif alias.name.startswith('taskflow.'):
                found.append(alias.name[len('taskflow.'):])
        return found
    if node.level:
        package = _package_of(name, path)
        base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
        prefix = base + (node.module.split('.') if node.module else [])
    elif node.module == 'taskflow' or (node.module or '').startswith('taskflow.'):
        prefix = node.module.split('.')[1:]
    else:
        return []
    dotted = '.'.join(prefix)
    if node.module:
        return [dotted or '__init__']
    found = []
    for alias in node.names:  # from . import x: a submodule, or a name from the package __init__
        candidate = '.'.join(prefix + [alias.name])
        found.append(candidate if _is_module(candidate) else (dotted or '__init__'))
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or \
        (isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def _collect(path: Path) -> list[Import]:
    name = _module_name(path)
    if path.name == '__init__.py' and path.parent == PACKAGE_DIR:
        name = '__init__'
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, scope: list[str], in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and not in_function and _is_type_checking(child.test):
                for orelse in child.orelse:  # only the else branch runs
                    visit(ast.Module(body=[orelse], type_ignores=[]), scope, in_function)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, name, path):
                    found.append(Import(name, target, '.'.join(scope) if in_function else None, child.lineno))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, scope + [getattr(child, 'name', '<lambda>')], True)
            elif isinstance(child, ast.ClassDef):
                visit(child, scope + [child.name], in_function)
            else:
                visit(child, scope, in_function)

    visit(tree, [], False)
    return found


MODULE_FILES = sorted(PACKAGE_DIR.rglob('*.py'))
IMPORTS = [imp for path in MODULE_FILES for imp in _collect(path)]
MODULE_LEVEL = [imp for imp in IMPORTS if imp.function is None and imp.imported != imp.importer]
FUNCTION_LEVEL = [imp for imp in IMPORTS if imp.function is not None]


def layer(module: str) -> int:
    return LAYERS[module.split('.')[0]]


def _same_package(a: str, b: str) -> bool:
    return '.' in a and a.split('.')[0] == b.split('.')[0] or '.' in b and a == b.split('.')[0]


def _allowed_at_module_level(imp: Import) -> bool:
    if layer(imp.importer) == TOP:
        return True
    if layer(imp.imported) == TOP:
        return False
    if _same_package(imp.importer, imp.imported):
        return True
    if layer(imp.imported) < layer(imp.importer):
        return True
    return (imp.importer.split('.')[0], imp.imported.split('.')[0]) in SAME_LAYER or \
        (imp.importer, imp.imported) in SAME_LAYER


def test_the_package_was_found():
    names = {_module_name(p) for p in MODULE_FILES}
    assert {'protocol', 'app', 'cli', 'backends.base'} <= names
    assert len(IMPORTS) > 50


@pytest.mark.parametrize('path', MODULE_FILES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_every_module_has_a_layer(path):
    name = _module_name(path)
    if path.parent == PACKAGE_DIR and path.name == '__init__.py':
        name = '__init__'
    assert name.split('.')[0] in LAYERS, f'{name} is not in the layer table of DESIGN.md §2 (add it there and here)'


def _module_params():
    params = []
    for imp in MODULE_LEVEL:
        key = (imp.importer.split('.')[0], imp.imported.split('.')[0])
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_MODULE_VIOLATIONS[key])] \
            if key in KNOWN_MODULE_VIOLATIONS else []
        params.append(pytest.param(imp, id=f'{imp.importer}->{imp.imported}:{imp.line}', marks=marks))
    return params


@pytest.mark.parametrize('imp', _module_params())
def test_module_level_imports_go_down(imp):
    assert _allowed_at_module_level(imp), (
        f'{imp}: layer L{layer(imp.importer)} may not import L{layer(imp.imported)} (DESIGN.md §2)')


def _function_params():
    params = []
    for imp in FUNCTION_LEVEL:
        allowed = (imp.importer, imp.function, imp.imported) in DEFERRED_BY_DESIGN
        key = (imp.importer, imp.imported)
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN_VIOLATIONS[key])] \
            if key in KNOWN_VIOLATIONS and not allowed else []
        params.append(pytest.param(imp, id=f'{imp.importer}.{imp.function}->{imp.imported}', marks=marks))
    return params


@pytest.mark.parametrize('imp', _function_params())
def test_function_level_imports_are_deferred_by_design(imp):
    assert (imp.importer, imp.function, imp.imported) in DEFERRED_BY_DESIGN, (
        f'{imp}: an import inside a function; import it at module level (when the layers allow) or add '
        'it to DEFERRED_BY_DESIGN with the reason')


def test_allow_lists_have_no_stale_entries():
    found_functions = {(i.importer, i.function, i.imported) for i in FUNCTION_LEVEL}
    found_pairs = {(i.importer.split('.')[0], i.imported.split('.')[0]) for i in IMPORTS}
    found_pairs |= {(i.importer, i.imported) for i in IMPORTS}
    found_modules = {(i.importer.split('.')[0], i.imported.split('.')[0]) for i in MODULE_LEVEL}
    stale = [key for key in DEFERRED_BY_DESIGN if key not in found_functions]
    stale += [key for key in KNOWN_VIOLATIONS
              if not any((i.importer, i.imported) == key for i in FUNCTION_LEVEL)]
    stale += [key for key in KNOWN_MODULE_VIOLATIONS if key not in found_modules]
    stale += [key for key in SAME_LAYER if key not in found_pairs]
    assert not stale, f'entries that no longer match an import (delete them): {stale}'


def test_same_layer_list_only_names_same_layer_pairs():
    for importer, imported in SAME_LAYER:
        assert layer(importer) == layer(imported), (importer, imported)


def test_canvas_never_imports_task():
    # DESIGN §2: canvas finds tasks through app.tasks, never imports task.
    assert not [imp for imp in IMPORTS if imp.importer == 'canvas' and imp.imported == 'task']


def test_worker_sees_the_app_only_as_a_type():
    # DESIGN §2: worker and beat see app only as a type (TYPE_CHECKING); the app never imports them.
    assert not [imp for imp in IMPORTS if imp.importer.split('.')[0] in ('worker', 'beat') and imp.imported == 'app']
    assert not [imp for imp in IMPORTS if imp.importer == 'app' and imp.imported in ('worker', 'beat')]


def test_protocol_is_pure():
    # DESIGN §2: protocol is pure, no I/O: no kombu, no redis, no sockets opened.
    tree = ast.parse((PACKAGE_DIR / 'protocol.py').read_text())
    imported = {alias.name.split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or '').split('.')[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and not node.level}
    assert not imported & {'kombu', 'redis', 'billiard', 'sqlalchemy', 'requests'}


@pytest.mark.parametrize('importer,imported,allowed', [
    ('protocol', 'app', False),          # up
    ('app', 'protocol', True),           # down
    ('canvas', 'task', False),           # up (and DESIGN forbids it by name)
    ('tracer', 'canvas', True),
    ('backends.redis', 'backends.base', True),  # within a subpackage
    ('backends', 'backends.memory', True),
    ('result', 'backends', False),       # same layer, not implied by DESIGN
    ('config', 'exceptions', True),      # same layer, listed in SAME_LAYER
    ('exceptions', 'config', False),
    ('backends.sqlite', 'transports.sqlite', True),   # listed in SAME_LAYER as a module pair
    ('backends.redis', 'transports.sqlite', False),   # ... which allows no other module
    ('backends', 'transports', False),
    ('cli', '__init__', False),          # nobody imports the package top
    ('__init__', 'cli', True),
    ('__main__', 'cli', True),
])
def test_the_checker_itself(importer, imported, allowed):
    assert _allowed_at_module_level(Import(importer, imported, None, 1)) is allowed
