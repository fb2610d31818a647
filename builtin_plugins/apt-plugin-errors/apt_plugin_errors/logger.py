"""A persistent error log on SQLite: every error event with its context, and recurring patterns.

WAL journal and a busy timeout let several processes (ranks, HPO workers) write one database; every
write takes the lock up front (BEGIN IMMEDIATE), so a writer waits instead of failing "database is
locked". Secrets in messages and context (keys named like token, password, secret, key) are redacted
before anything is stored. A pattern is the error type plus the message with numbers, hex and paths
masked plus the top stack frames' function names, hashed; it counts first and last sightings.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sqlite3
import time
import traceback
from pathlib import Path
from typing import Any

from apt_sdk import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp REAL NOT NULL,
    severity TEXT NOT NULL,
    error_type TEXT NOT NULL,
    message TEXT NOT NULL,
    stack_trace TEXT,
    context TEXT,
    plugin TEXT,
    hook TEXT,
    pipeline TEXT,
    run_id TEXT,
    rank INTEGER,
    epoch INTEGER,
    global_step INTEGER,
    checkpoint_path TEXT,
    pattern_hash TEXT NOT NULL,
    resolved INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS errors_time ON errors (timestamp);
CREATE INDEX IF NOT EXISTS errors_pattern ON errors (pattern_hash);
CREATE TABLE IF NOT EXISTS patterns (
    hash TEXT PRIMARY KEY,
    error_type TEXT NOT NULL,
    normalized_message TEXT NOT NULL,
    top_frames TEXT NOT NULL,
    count INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
"""
FIELDS = ("severity", "plugin", "hook", "pipeline", "run_id", "rank", "epoch", "global_step", "checkpoint_path")
SECRET_KEY = re.compile(r"token|password|passwd|secret|api[_-]?key|(^|[_-])key($|[_-])", re.IGNORECASE)
SECRET_IN_TEXT = re.compile(r"(?i)\b(token|password|passwd|secret|api[_-]?key|key)(\s*[=:]\s*)(['\"]?)[^\s'\",;]+")
BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
FRAME = re.compile(r'File "[^"]*", line \d+, in (\S+)')


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-looking keys and key=value pairs in strings masked."""
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and SECRET_KEY.search(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return BEARER.sub(r"\1***", SECRET_IN_TEXT.sub(r"\1\2\3***", value))
    return value


def normalize_message(message: str) -> str:
    message = re.sub(r"(?:[A-Za-z]:)?(?:[\\/][\w.@+-]+){2,}[\\/]?", "<path>", message)
    message = re.sub(r"0x[0-9a-fA-F]+", "<hex>", message)
    return re.sub(r"\d+(?:\.\d+)?", "<n>", message)


def pattern_of(error_type: str, message: str, stack_trace: str | None) -> tuple[str, str, str]:
    frames = ",".join(FRAME.findall(stack_trace or "")[-3:])
    normalized = normalize_message(message)
    digest = hashlib.sha256(f"{error_type}|{normalized}|{frames}".encode()).hexdigest()[:16]
    return digest, normalized, frames


class ErrorLogger:
    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout=60000")
        try:
            self._initialise()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            self.db.close()
            raise UserError(f"{self.db_path} is not an error log ({exc}): pass a run folder or its errors.db") from None

    def _initialise(self) -> None:
        # Switching to WAL needs an exclusive lock, and SQLite answers BUSY at once (no busy handler)
        # while another process is doing the same: retry with jitter instead of failing.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                for statement in filter(str.strip, SCHEMA.split(";")):
                    self.db.execute(statement)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005 + random.random() * 0.05)

    def _write(self, action):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            result = action()
            self.db.execute("COMMIT")
            return result
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    # -- writing ----------------------------------------------------------------------------------
    def log_error(self, error: BaseException | str | dict, context: dict | None = None,
                  stack_trace: str | None = None, **fields: Any) -> int:
        """Record one error event; ``fields`` are any of severity, plugin, hook, pipeline, run_id, rank,
        epoch, global_step, checkpoint_path. Returns the row id."""
        if isinstance(error, BaseException):
            error_type, message = type(error).__name__, str(error)
            stack_trace = stack_trace or "".join(traceback.format_exception(error))
        elif isinstance(error, dict):
            error_type, message = error.get("type", "Error"), error.get("message", "")
            stack_trace = stack_trace or error.get("traceback")
            fields = {k: error[k] for k in FIELDS if error.get(k) is not None} | fields
        else:
            error_type, message = "Error", str(error)
        unknown = set(fields) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown error fields: {sorted(unknown)}")
        message, stack_trace = redact(message), redact(stack_trace) if stack_trace else None
        digest, normalized, frames = pattern_of(error_type, message, stack_trace)
        now = time.time()
        row = {"severity": "error", **fields}
        columns = ["timestamp", "error_type", "message", "stack_trace", "context", "pattern_hash", *row]
        values = [now, error_type, message, stack_trace, json.dumps(redact(context or {}), default=str), digest,
                  *row.values()]

        def insert() -> int:
            cursor = self.db.execute(
                f"INSERT INTO errors ({', '.join(columns)}) VALUES ({', '.join('?' * len(values))})", values)
            self.db.execute(
                "INSERT INTO patterns VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT(hash) DO UPDATE SET "
                "count = count + 1, last_seen = excluded.last_seen", (digest, error_type, normalized, frames, now, now))
            return cursor.lastrowid

        return self._write(insert)

    def mark_resolved(self, error_id: int | None = None, pattern_hash: str | None = None) -> int:
        """Mark one error, or every error of a pattern, resolved; returns how many rows changed."""
        if (error_id is None) == (pattern_hash is None):
            raise ValueError("give exactly one of error_id or pattern_hash")
        column, value = ("id", error_id) if error_id is not None else ("pattern_hash", pattern_hash)
        return self._write(lambda: self.db.execute(
            f"UPDATE errors SET resolved = 1 WHERE {column} = ? AND resolved = 0", (value,)).rowcount)

    # -- reading ----------------------------------------------------------------------------------
    def get(self, error_id: int) -> dict | None:
        row = self.db.execute("SELECT * FROM errors WHERE id = ?", (error_id,)).fetchone()
        return _row(row) if row else None

    def search(self, text: str | None = None, error_type: str | None = None, unresolved: bool = False,
               limit: int = 50) -> list[dict]:
        where, args = [], []
        if text:
            where.append("(message LIKE ? OR stack_trace LIKE ? OR context LIKE ?)")
            args += [f"%{text}%"] * 3
        if error_type:
            where.append("error_type = ?")
            args.append(error_type)
        if unresolved:
            where.append("resolved = 0")
        sql = "SELECT * FROM errors" + (f" WHERE {' AND '.join(where)}" if where else "")
        return [_row(r) for r in self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM errors").fetchone()[0]

    def analyze_error_patterns(self, days: float = 7) -> dict[str, int]:
        """Errors per type over the last ``days``."""
        since = time.time() - days * 86400
        rows = self.db.execute("SELECT error_type, COUNT(*) FROM errors WHERE timestamp >= ? GROUP BY error_type "
                               "ORDER BY COUNT(*) DESC", (since,))
        return {error_type: n for error_type, n in rows}

    def generate_error_report(self, save_path: str | Path | None = None, days: float = 7) -> dict:
        """A summary (types, severities, top patterns, recent unresolved), optionally saved as JSON."""
        db = self.db
        report = {
            "database": str(self.db_path),
            "generated_at": time.time(),
            "total": self.count(),
            "unresolved": db.execute("SELECT COUNT(*) FROM errors WHERE resolved = 0").fetchone()[0],
            "by_type": self.analyze_error_patterns(days),
            "by_severity": dict(db.execute("SELECT severity, COUNT(*) FROM errors GROUP BY severity").fetchall()),
            "top_patterns": [dict(r) for r in db.execute(
                "SELECT hash, error_type, normalized_message, top_frames, count, first_seen, last_seen "
                "FROM patterns ORDER BY count DESC LIMIT 10")],
            "recent_unresolved": self.search(unresolved=True, limit=10),
        }
        if save_path is not None:
            Path(save_path).write_text(json.dumps(report, indent=2))
        return report


def _row(row: sqlite3.Row) -> dict:
    data = dict(row)
    data["context"] = json.loads(data["context"]) if data.get("context") else {}
    data["resolved"] = bool(data["resolved"])
    return data
