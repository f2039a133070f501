"""Jobs and their metadata in SQLite (one file in the data directory, WAL mode, one writer).

Every change is committed before it is acted on, so a server killed at any point finds each job
in the last state it reached."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    settings TEXT NOT NULL,
    state TEXT NOT NULL,
    stage TEXT,
    progress REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, created_at);
"""
COLUMNS = ("id", "owner", "kind", "settings", "state", "stage", "progress", "created_at",
           "started_at", "finished_at", "error", "attempts")  # fmt: skip


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, row: tuple[Any, ...] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(zip(COLUMNS, row, strict=True))
        job["settings"] = json.loads(job["settings"])
        return job

    def insert(self, job_id: str, owner: str, kind: str, settings: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, owner, kind, settings, state, created_at)"
                " VALUES (?, ?, ?, ?, 'queued', ?)",
                (job_id, owner, kind, json.dumps(settings), time.time()),
            )

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            cur = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,))
            return self._row(cur.fetchone())

    def list(self, owner: str, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE owner = ?"
        args: list[Any] = [owner]
        if state is not None:
            query += " AND state = ?"
            args.append(state)
        query += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [job for job in map(self._row, rows) if job is not None]

    def update(self, job_id: str, **fields: Any) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ?", (*fields.values(), job_id)
            )

    def transition(self, job_id: str, from_states: tuple[str, ...], **fields: Any) -> bool:
        """Update only while the job is in one of ``from_states``; True when it was."""
        assignments = ", ".join(f"{name} = ?" for name in fields)
        marks = ", ".join("?" for _ in from_states)
        with self._lock:
            cur = self._db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND state IN ({marks})",
                (*fields.values(), job_id, *from_states),
            )
            return cur.rowcount == 1

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def next_queued(self) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1"
            ).fetchone()
        return None if row is None else row[0]

    def ids_in(self, state: str) -> builtins.list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state = ?", (state,)).fetchall()
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: n for state, n in rows}


class SqlJobStore:
    """The same store on SQLAlchemy Core, for a database URL (``--database-url``), e.g.
    ``postgresql+psycopg://user@host/db``; a ``sqlite:///`` URL works too."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self.engine = sa.create_engine(url, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":

            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(connection: Any, _: Any) -> None:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")

        meta = sa.MetaData()
        self.jobs = sa.Table(
            "jobs", meta,
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("owner", sa.String(256), nullable=False),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("settings", sa.Text, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("stage", sa.String(128)),
            sa.Column("progress", sa.Float, nullable=False, default=0.0),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("started_at", sa.Float),
            sa.Column("finished_at", sa.Float),
            sa.Column("error", sa.Text),
            sa.Column("attempts", sa.Integer, nullable=False, default=0),
            sa.Index("jobs_owner", "owner", "created_at"),
            sa.Index("jobs_state", "state", "created_at"),
        )  # fmt: skip
        meta.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    def _row(self, row: Any) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row._mapping)
        job["settings"] = json.loads(job["settings"])
        return job

    def insert(self, job_id: str, owner: str, kind: str, settings: dict[str, Any]) -> None:
        with self.engine.begin() as db:
            db.execute(self.jobs.insert().values(
                id=job_id, owner=owner, kind=kind, settings=json.dumps(settings), state="queued",
                progress=0.0, created_at=time.time(), attempts=0,
            ))  # fmt: skip

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as db:
            return self._row(db.execute(self.jobs.select().where(self.jobs.c.id == job_id)).first())

    def list(self, owner: str, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = self.jobs.select().where(self.jobs.c.owner == owner)
        if state is not None:
            query = query.where(self.jobs.c.state == state)
        query = query.order_by(self.jobs.c.created_at.desc()).limit(limit)
        with self.engine.connect() as db:
            return [job for job in map(self._row, db.execute(query)) if job is not None]

    def update(self, job_id: str, **fields: Any) -> None:
        with self.engine.begin() as db:
            db.execute(self.jobs.update().where(self.jobs.c.id == job_id).values(**fields))

    def transition(self, job_id: str, from_states: tuple[str, ...], **fields: Any) -> bool:
        query = (
            self.jobs.update()
            .where(self.jobs.c.id == job_id, self.jobs.c.state.in_(from_states))
            .values(**fields)
        )
        with self.engine.begin() as db:
            return db.execute(query).rowcount == 1

    def delete(self, job_id: str) -> None:
        with self.engine.begin() as db:
            db.execute(self.jobs.delete().where(self.jobs.c.id == job_id))

    def next_queued(self) -> str | None:
        query = (
            self._sa.select(self.jobs.c.id)
            .where(self.jobs.c.state == "queued")
            .order_by(self.jobs.c.created_at)
            .limit(1)
        )
        with self.engine.connect() as db:
            row = db.execute(query).first()
        return None if row is None else row[0]

    def ids_in(self, state: str) -> builtins.list[str]:
        query = self._sa.select(self.jobs.c.id).where(self.jobs.c.state == state)
        with self.engine.connect() as db:
            return [row[0] for row in db.execute(query)]

    def counts(self) -> dict[str, int]:
        sa = self._sa
        query = sa.select(self.jobs.c.state, sa.func.count()).group_by(self.jobs.c.state)
        with self.engine.connect() as db:
            return {state: n for state, n in db.execute(query)}


def open_store(data_dir: Path, database_url: str | None = None) -> JobStore | SqlJobStore:
    """SQLite in the data directory by default (no set-up); a database URL via SQLAlchemy."""
    if database_url:
        return SqlJobStore(database_url)
    return JobStore(data_dir / "jobs.sqlite3")
