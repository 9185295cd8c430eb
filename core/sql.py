"""Small helpers for the few hand-written SQL statements on the hot path.

The usage hot path runs a handful of statements per request while an organization's row lock is
held; the ORM's query compilation costs more than the statements themselves there, so those few
are written out once here and in the modules that use them. Everything else uses the ORM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from django.db import connection, transaction
from django.db.models.base import ModelState
from django.utils.dateparse import parse_datetime
from psycopg import pq


def qn(name: str) -> str:
    return f'"{name}"'  # PostgreSQL and SQLite quote identifiers alike


def for_no_key_update(*, of: str) -> str:
    """PostgreSQL row lock clause; empty on SQLite, where IMMEDIATE transactions serialize writers."""
    return f" FOR NO KEY UPDATE OF {qn(of)}" if connection.vendor == "postgresql" else ""


def db_datetime(value: datetime) -> object:
    """A datetime parameter in the form the backend stores (naive UTC text on SQLite)."""
    return connection.ops.adapt_datetimefield_value(value)


def from_db_datetime(value: object) -> datetime | None:
    """A datetime read by raw SQL outside a model field (SQLite returns text)."""
    if value is None or isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if isinstance(value, datetime) and value.tzinfo is None else value
    parsed = parse_datetime(str(value))
    if parsed is None:
        raise ValueError(f"not a datetime: {value!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@contextmanager
def atomic_pipeline() -> Iterator[None]:
    """transaction.atomic() whose statements psycopg sends in pipeline mode (PostgreSQL).

    A statement's answer is waited for only when its rows are read (see `Sent`); what is still
    queued goes in one exchange when the block ends, with the COMMIT when this is the outermost
    transaction, and its errors raise there (Django's IntegrityError and so on), rolling back all
    of it. So a transaction can lock, read everything it needs and write in two exchanges while
    the lock is held. The server still runs the statements one at a time, in order: a read sent
    after a lock runs once the lock is granted and, under READ COMMITTED, takes its snapshot then,
    so it sees what the previous holder committed.

    Inside, use only statements whose results are read through `Sent.rows()` or not at all: in a
    pipeline `cursor.rowcount` is -1 until the answer arrives (Model.save() of an existing row and
    QuerySet.update() misbehave), and a nested atomic() cannot catch an error, which only surfaces
    at the end. On SQLite (a local file: a round trip costs little) it is plain atomic().
    """
    with transaction.atomic():
        if connection.vendor != "postgresql" or in_pipeline():
            yield
            return
        outermost = len(connection.atomic_blocks) == 1
        pg = connection.connection
        with connection.wrap_database_errors, pg.pipeline():
            yield
            if outermost:
                # COMMIT goes with the writes; Django's own commit on leaving atomic() then finds
                # the transaction done, and runs the on_commit callbacks as usual.
                pg.commit()


def in_pipeline() -> bool:
    if connection.vendor != "postgresql" or connection.connection is None:
        return False
    return connection.connection.pgconn.pipeline_status != pq.PipelineStatus.OFF


class Sent:
    """A statement sent now whose rows are read later: in a pipeline, reading is what waits."""

    __slots__ = ("_cursor",)

    def __init__(self, sql: str, params: list[Any]):
        self._cursor = connection.cursor()
        self._cursor.execute(sql, params)

    def rows(self) -> list[tuple[Any, ...]]:
        try:
            return list(self._cursor.fetchall())
        finally:
            self._cursor.close()


def placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def update_rows(table: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> None:
    """Set `columns` of many rows by id: one statement on PostgreSQL (UPDATE ... FROM VALUES),
    one prepared statement per row on SQLite (local, so a round trip costs little there).

    columns: (name, PostgreSQL type) pairs; each row: [id, *values in column order].
    """
    if not rows:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(*_update_sql(table, columns, rows))
        else:
            sets = ", ".join(f"{qn(name)} = %s" for name, _ in columns)
            cursor.executemany(f"UPDATE {qn(table)} SET {sets} WHERE id = %s", [[*row[1:], row[0]] for row in rows])


def _update_sql(table: str, columns: list[tuple[str, str]], rows: list[list[Any]]) -> tuple[str, list[Any]]:
    names = ["id", *(name for name, _ in columns)]
    sets = ", ".join(f"{qn(name)} = v.{qn(name)}" for name, _ in columns)
    if _arrays_for(rows):
        # One binary array per column, as insert_rows sends: a thousand rows cost the same short
        # statement to parse (a VALUES list's text grows with the rows, on both ends).
        kinds = ["bigint", *(kind for _, kind in columns)]
        arrays = ", ".join(f"%b::{kind}[]" for kind in kinds)
        sql = (
            f"UPDATE {qn(table)} AS t SET {sets} FROM UNNEST({arrays}) AS v({', '.join(qn(n) for n in names)})"
            " WHERE t.id = v.id"
        )
        return sql, _column_arrays(kinds, rows)
    first = "(" + ", ".join(["%s::bigint", *(f"%s::{kind}" for _, kind in columns)]) + ")"
    rest = "(" + placeholders(len(names)) + ")"
    values = ", ".join([first, *[rest] * (len(rows) - 1)])
    sql = (
        f"UPDATE {qn(table)} AS t SET {sets} FROM (VALUES {values}) AS v({', '.join(qn(n) for n in names)})"
        " WHERE t.id = v.id"
    )
    return sql, [value for row in rows for value in row]


def _column_arrays(kinds: list[str], rows: list[list[Any]]) -> list[list[Any]]:
    """Rows turned into one list per column, for binary array parameters."""
    arrays = [list(column) for column in zip(*rows, strict=True)]
    for kind, values in zip(kinds, arrays, strict=True):
        if kind == "numeric":  # a binary array holds one Python type: 0 and Decimal("5") differ
            values[:] = [None if v is None else Decimal(v) for v in values]
    return arrays


Update = tuple[str, list[tuple[str, str]], list[list[Any]]]  # (table, columns, rows) as update_rows takes


_converters: dict[tuple[str, str, tuple[str, ...]], list[tuple[int, list[Any], Any]]] = {}


def fetch_instances(model: type[Any], sql: str, params: list[Any], *, extra: int = 0) -> list[Any]:
    """Run `sql` (selecting every concrete column of `model`, in field order, then `extra` more
    columns) and build model instances, like Model.objects.raw() but with the column-to-field
    mapping and the backend's converters worked out once per model instead of on every call.
    The extra columns are returned as a tuple on `instance._extra`."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return build_instances(model, cursor.fetchall(), extra=extra)


def build_instances(model: type[Any], rows: list[tuple[Any, ...]], *, extra: int = 0) -> list[Any]:
    """Model instances from rows selected as fetch_instances describes."""
    fields = model._meta.concrete_fields
    key = (connection.vendor, model._meta.label, tuple(f.attname for f in fields))
    converters = _converters.get(key)
    if converters is None:
        converters = []
        for index, field in enumerate(fields):
            col = field.get_col(model._meta.db_table)  # converters take the expression, as in raw()
            functions = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            if functions:
                converters.append((index, functions, col))
        _converters[key] = converters
    names = [f.attname for f in fields]
    count = len(fields)
    alias = connection.alias
    new: Any = model.__new__
    result = []
    for row in rows:
        values = list(row[:count])
        for index, functions, field in converters:
            value = values[index]
            for convert in functions:
                value = convert(value, field, connection)
            values[index] = value
        # What Model.from_db builds, without __init__'s per-field descriptor work (a thousand-event
        # batch loads thousands of rows). These models send no pre_init/post_init signals.
        instance = new(model)
        instance.__dict__.update(zip(names, values, strict=True))
        state = ModelState()
        state.adding = False
        state.db = alias
        instance._state = state
        instance._extra = tuple(row[count : count + extra]) if extra else ()
        result.append(instance)
    return result


@lru_cache(maxsize=64)
def columns_of(model: type[Any], alias: str = "") -> str:
    """The model's concrete columns in field order (what fetch_instances expects), optionally prefixed."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(f'{prefix}"{f.column}"' for f in model._meta.concrete_fields)


def insert_rows(
    table: str,
    columns: list[tuple[str, str]],
    rows: list[list[Any]],
    *,
    along: list[Update] = (),  # type: ignore[assignment]
    returning: bool = True,
) -> list[int]:
    """INSERT many rows in one statement and return their ids, in order (or nothing, without
    waiting for the answer in a pipeline, when `returning` is False).

    For the hot path's event and ledger inserts. On PostgreSQL many rows travel as one binary
    array per column (INSERT ... SELECT FROM UNNEST(%b, ...)): the ORM's bulk_create sends text
    arrays whose quoting, and a long VALUES list's parsing, cost more than the insert itself. A
    few rows go as VALUES with a placeholder each: psycopg's array dumping costs more for them.
    `along`: updates (as update_rows takes them) of other rows to run in the same statement, as
    data-modifying CTEs on PostgreSQL (one round trip instead of several while a lock is held;
    they must not touch the same rows, since CTEs do not see each other's changes); separately
    elsewhere. columns: (name, PostgreSQL type); values must already be in database form (see
    db_datetime), JSON as text.
    """
    along = [update for update in along if update[2]]
    if not rows:
        for update in along:
            update_rows(*update)
        return []
    names = ", ".join(qn(name) for name, _ in columns)
    postgresql = connection.vendor == "postgresql"
    ctes: list[str] = []
    params: list[Any] = []
    for index, update in enumerate(along):
        if postgresql:
            update_sql, update_params = _update_sql(*update)
            ctes.append(f"u{index} AS ({update_sql} RETURNING 1)")
            params.extend(update_params)
        else:
            update_rows(*update)
    if _arrays_for(rows):
        arrays = ", ".join(f"%b::{'text' if kind == 'jsonb' else kind}[]" for _, kind in columns)
        select = ", ".join(f"{qn(name)}::jsonb" if kind == "jsonb" else qn(name) for name, kind in columns)
        sql = f"INSERT INTO {qn(table)} ({names}) SELECT {select} FROM UNNEST({arrays}) AS v({names})"
        params.extend(_column_arrays([kind for _, kind in columns], rows))
    else:
        one = "(" + ", ".join(f"%s::{kind}" if postgresql else "%s" for _, kind in columns) + ")"
        sql = f"INSERT INTO {qn(table)} ({names}) VALUES {', '.join([one] * len(rows))}"
        params.extend(value for row in rows for value in row)
    if ctes:
        sql = f"WITH {', '.join(ctes)} {sql}"
    if returning:
        sql += " RETURNING id"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()] if returning else []


ARRAYS_FROM = 16  # rows; below it scalar placeholders cost less than psycopg's array dumping


def _arrays_for(rows: list[list[Any]]) -> bool:
    """Send rows as one binary array per column (PostgreSQL, many rows) rather than a placeholder per value."""
    return len(rows) >= ARRAYS_FROM and _binary_params()


def _binary_params() -> bool:
    """psycopg's %b placeholders need server-side binding (settings: DB_SERVER_SIDE_BINDING)."""
    return connection.vendor == "postgresql" and bool(
        connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
    )


def in_list(column: str, values: list[Any]) -> tuple[str, list[Any]]:
    """`column IN (...)`: a placeholder per value for a few values; for many on PostgreSQL one
    array parameter (`= ANY(%s)`), so a thousand ids cost one placeholder to parse and send.

    Not for the last column of a multi-column index on PostgreSQL 15: an IN list there is only a
    filter (see usage.services.record.stored_events_send)."""
    if len(values) == 1:
        return f"{column} = %s", list(values)
    if connection.vendor == "postgresql" and len(values) >= ARRAYS_FROM:
        return f"{column} = ANY(%s)", [list(values)]
    return f"{column} IN ({placeholders(len(values))})", list(values)
