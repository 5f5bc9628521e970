"""Sphinx extension for the taskflow docs: pages generated from the code at build time.

- ``.. taskflow-settings::`` -- the configuration reference, one entry per name in
  ``taskflow.config.DEFAULTS`` (type, default, environment variable, doc), grouped by prefix.
  Each entry is a ``setting`` object, so ``:setting:`task_acks_late``` links to it; with
  ``nitpicky = True`` (conf.py) a link to a setting that does not exist fails the ``-W`` build.
  Settings that no module of ``taskflow`` other than ``config.py`` names are marked as
  accepted but not acted on: that is how a Celery setting kept for compatibility shows.
- ``.. taskflow-cli::`` -- the ``--help`` of ``taskflow`` and of every verb, from the click
  command objects themselves.

Both note ``config.py`` / ``cli.py`` as dependencies, so an incremental build notices changes.
"""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

#: Section title for each setting-name prefix, in page order; names with no listed prefix go
#: under "General".
SECTIONS = [
    ('', 'General'),
    ('broker_', 'Broker'),
    ('result_', 'Results'),
    ('redis_', 'Redis client (result backend)'),
    ('database_', 'SQL result backend'),
    ('task_', 'Tasks'),
    ('worker_', 'Worker'),
    ('event_', 'Events'),
    ('control_', 'Remote control'),
    ('beat_', 'Beat'),
]

_RST_SPECIAL = re.compile(r'([\\*`|_])')


def _escape(text: str) -> str:
    return _RST_SPECIAL.sub(r'\\\1', text)


def _section_of(name: str) -> str:
    for prefix, title in SECTIONS[1:]:
        if name.startswith(prefix):
            return title
    return SECTIONS[0][1]


def _default(value: Any) -> str:
    if isinstance(value, timedelta):
        parts = [f'{unit}={getattr(value, unit)}' for unit in ('days', 'seconds', 'microseconds')
                 if getattr(value, unit)]
        return f'timedelta({", ".join(parts)})  # {value.total_seconds():g} s'
    return repr(value)


def _linked_doc(doc: str, names: set[str], own: str) -> str:
    """The doc line as reST: escaped, with other setting names turned into links (only names
    with an underscore: ``imports`` or ``timezone`` are also plain words)."""
    linkable = sorted((re.escape(n) for n in names if '_' in n), key=len, reverse=True)
    pattern = re.compile(r'\b(' + '|'.join(linkable) + r')\b')
    out, last = [], 0
    for match in pattern.finditer(doc):
        name = match.group(1)
        out.append(_escape(doc[last:match.start()]))
        out.append(f'``{name}``' if name == own else f':setting:`{name}`')
        last = match.end()
    out.append(_escape(doc[last:]))
    return ''.join(out)


def _unused_settings(names: list[str]) -> set[str]:
    """Settings no module of the package except ``config.py`` mentions by name."""
    import taskflow  # noqa: PLC0415

    package = Path(taskflow.__file__).parent
    sources = [p.read_text(encoding='utf-8') for p in package.rglob('*.py') if p.name != 'config.py']
    text = '\n'.join(sources)
    return {name for name in names if not re.search(r'\b' + re.escape(name) + r'\b', text)}


class SettingsDirective(SphinxDirective):
    """``.. taskflow-settings::``: every setting of ``taskflow.config.DEFAULTS``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from taskflow import config  # noqa: PLC0415

        self.env.note_dependency(config.__file__)
        self.env.note_dependency(__file__)
        defaults = config.DEFAULTS
        names = list(defaults)
        unused = _unused_settings(names)
        grouped: dict[str, list[str]] = {title: [] for _, title in SECTIONS}
        for name in names:
            grouped[_section_of(name)].append(name)
        lines: list[str] = []
        for _, title in SECTIONS:
            members = grouped[title]
            if not members:
                continue
            lines += [title, '-' * len(title), '']
            for name in members:
                option = defaults[name]
                lines += [f'.. setting:: {name}', '']
                lines += [f'   :Type: ``{option.type}``',
                          f'   :Default: ``{_default(option.default)}``',
                          f'   :Environment: ``TASKFLOW_{name.upper()}``']
                if name in unused:
                    lines.append('   :Status: accepted, but taskflow does not act on it yet')
                lines += ['', f'   {_linked_doc(option.doc, set(names), name)}', '']
        source = self.get_source_info()[0] or 'taskflow.config.DEFAULTS'
        content = StringList(lines, source=source)
        container = nodes.container()
        nested_parse_with_titles(self.state, content, container)
        return container.children


class CliDirective(SphinxDirective):
    """``.. taskflow-cli::``: ``taskflow --help`` and ``taskflow VERB --help`` for every verb."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from taskflow import cli  # noqa: PLC0415

        self.env.note_dependency(cli.__file__)
        self.env.note_dependency(__file__)
        group = cli.cli
        top = click.Context(group, info_name='taskflow', terminal_width=92, max_content_width=92,
                            **group.context_settings)  # -h as well as --help, as the CLI has it
        lines = ['``taskflow``', '-' * 12, '', '::', '']
        lines += ['   ' + line if line else '' for line in group.get_help(top).splitlines()]
        lines.append('')
        for name in sorted(group.commands):
            command = group.commands[name]
            ctx = click.Context(command, info_name=name, parent=top, terminal_width=92, max_content_width=92)
            title = f'``taskflow {name}``'
            lines += [title, '-' * len(title), '', '::', '']
            lines += ['   ' + line if line else '' for line in command.get_help(ctx).splitlines()]
            lines.append('')
        container = nodes.container()
        nested_parse_with_titles(self.state, StringList(lines, source='taskflow.cli'), container)
        return container.children


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_object_type('setting', 'setting', indextemplate='pair: %s; setting')
    app.add_directive('taskflow-settings', SettingsDirective)
    app.add_directive('taskflow-cli', CliDirective)
    return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True}
