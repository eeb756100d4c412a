# -*- test-case-name: tests.test_imports -*-
"""
``dataset`` without alembic, or SQLAlchemy's PostgreSQL dialect on SQLite,
until they are used.

dataset imports alembic when it is imported, for one property,
``Database.op`` (what its ``create_column`` and ``create_table`` use).
Gotaxy never calls it: the schema is ``gotaxy.store.schema``'s and
``gotaxy.store.migrations`` changes it.  alembic, with mako and pygments
that it imports in turn and SQLAlchemy's dialects for every database it can
migrate, was 30 % of a server's CPU before its control port listened (py-spy,
issue 15 goal 4) and 11 MiB of its heap (tracemalloc, goal 3).  It also
imports SQLAlchemy's PostgreSQL dialect for the name ``JSONB`` (its type for
a JSON column it creates itself, on PostgreSQL): 0.15 s and 2.8 MiB more on
SQLite, where nothing else needs the dialect (on PostgreSQL SQLAlchemy
imports it for the engine, after this).

So ``import_dataset`` imports dataset while ``sys.modules`` holds stand-ins
for the modules it takes those names from; each name is a ``_WhenUsed``
that imports the real one at its first use.  The stand-ins are
removed at once, so that ``import alembic`` (a migration that adds a column)
and SQLAlchemy's engine for a PostgreSQL URL get the modules themselves.
Should a dataset release take other names from them, the stand-ins fail its import and dataset is imported as it is,
with alembic: slower, never broken.

Every module of Gotaxy that uses dataset goes through ``gotaxy.store``,
whose ``__init__`` calls this first.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Dict

#: The modules dataset imports but Gotaxy need not, and the names it takes from each.
_TAKEN = {
    "alembic.migration": ("MigrationContext",),
    "alembic.operations": ("Operations",),
    "sqlalchemy.dialects.postgresql": ("JSONB",),
}


class _WhenUsed:
    """A name of ``module`` that is imported when it is first called or looked into."""

    def __init__(self, module: str, name: str) -> None:
        self._module = module
        self._name = name

    def _real(self) -> Any:
        return getattr(importlib.import_module(self._module), self._name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._real()(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._real(), attribute)


def import_dataset() -> types.ModuleType:
    """The ``dataset`` module, imported without the modules of ``_TAKEN`` if neither it nor they were yet."""
    if "dataset" in sys.modules or any(module in sys.modules for module in _TAKEN):
        import dataset

        return dataset
    stand_ins: Dict[str, types.ModuleType] = {}
    for module, names in _TAKEN.items():
        stand_in = types.ModuleType(module, "a stand-in until dataset is imported (gotaxy.store.dataset_import)")
        for name in names:
            setattr(stand_in, name, _WhenUsed(module, name))
        stand_ins[module] = stand_in
    sys.modules.update(stand_ins)
    try:
        import dataset
    except ImportError:
        for name in [n for n in sys.modules if n == "dataset" or n.startswith("dataset.")]:
            del sys.modules[name]
        for module in stand_ins:
            del sys.modules[module]
        import dataset
    finally:
        for module, stand_in in stand_ins.items():
            if sys.modules.get(module) is stand_in:
                del sys.modules[module]
    return dataset
