"""SQLite write transactions shared by the local registry and the local online store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def write_transaction(connect: Callable[[], sqlite3.Connection]) -> Iterator[sqlite3.Connection]:
    """One write transaction on a fresh connection (opened with `isolation_level=None`).

    BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue instead of
    both reading the same state; any error rolls back, and the connection is always closed.
    """
    con = connect()
    try:
        con.execute("BEGIN IMMEDIATE")
        yield con
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise
    finally:
        con.close()
