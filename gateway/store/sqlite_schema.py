"""The SQLite store's schema (:mod:`gateway.store.sqlite`): the tables and indexes, the
schema version (``PRAGMA user_version``) and the migration that brings a database made by
an older version up to it."""

from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS health (k INTEGER PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS payments (
    id TEXT PRIMARY KEY,
    merchant_id TEXT,
    status TEXT NOT NULL,
    provider TEXT,
    provider_reference TEXT,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL,
    reconcile INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL,
    created_at REAL,
    reference TEXT
);
CREATE INDEX IF NOT EXISTS payments_reconcile ON payments (reconcile, updated_at);
CREATE INDEX IF NOT EXISTS payments_provider_ref ON payments (provider, provider_reference);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payment_id TEXT NOT NULL,
    event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_payment ON events (payment_id, id);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    lease_until REAL NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    response TEXT,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (expires_at);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_events (
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_events_expires ON webhook_events (expires_at);
CREATE TABLE IF NOT EXISTS unmatched_webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    provider TEXT NOT NULL,
    received_at REAL NOT NULL,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    payment_id TEXT,
    state TEXT NOT NULL,
    next_attempt_at REAL,
    lease_owner TEXT,
    lease_until REAL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS notifications_payment ON notifications (payment_id, seq);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    payment_id TEXT,
    merchant_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    provider TEXT,
    created_at REAL,
    entry TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_payment ON ledger (payment_id, seq);
CREATE INDEX IF NOT EXISTS ledger_provider_time ON ledger (provider, created_at);
CREATE TABLE IF NOT EXISTS settlement_lines (
    provider TEXT NOT NULL,
    line_id TEXT NOT NULL,
    settled_on TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (provider, line_id)
);
CREATE INDEX IF NOT EXISTS settlement_lines_day ON settlement_lines (provider, settled_on);
CREATE TABLE IF NOT EXISTS ledger_balances (
    merchant_id TEXT NOT NULL,
    currency TEXT NOT NULL,
    account TEXT NOT NULL,
    balance INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, currency, account)
);
"""

#: GET /v1/events without payment_id (SPEC 3.2): a merchant's events newest first,
#: optionally by delivery state or type; made by schema version 2.
EVENT_INDEXES = (
    "notifications_merchant ON notifications (merchant_id, seq)",
    "notifications_merchant_state ON notifications (merchant_id, state, seq)",
    "notifications_merchant_type ON notifications (merchant_id, type, seq)",
)

# Search (SPEC 3.1): one index per way in, each ending in the page order (created_at, id)
# so a page is one index range read backwards, whatever its depth. Created after
# migrate, which adds the columns to a database made before them.
SEARCH_INDEXES = {
    "all": "payments_search ON payments (merchant_id, created_at, id)",
    "reference": "payments_search_reference ON payments (merchant_id, reference, created_at, id)",
    "status": "payments_search_status ON payments (merchant_id, status, created_at, id)",
    "provider": "payments_search_provider ON payments (merchant_id, provider, created_at, id)",
}

#: ``PRAGMA user_version`` of the current schema: 1 = payments.created_at / reference
#: (search); 2 = notifications.merchant_id / type (event listing). A database at an older
#: version is upgraded by :func:`migrate`.
SCHEMA_VERSION = 2


def apply_schema(conn: sqlite3.Connection) -> None:
    """Create what is missing, then upgrade a database made by an older version."""
    conn.executescript(SCHEMA)
    migrate(conn)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made by an older version up to :data:`SCHEMA_VERSION`, in one
    transaction (a crash leaves it as it was; the next open tries again).

    0 -> 1: payments gets ``created_at`` and ``reference`` (filled from each doc) and
    the search indexes. 1 -> 2: notifications gets ``merchant_id`` and ``type`` (filled
    from each event) and the event listing indexes.
    """
    if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(payments)")}
        if "created_at" not in columns:
            conn.execute("ALTER TABLE payments ADD COLUMN created_at REAL")
        if "reference" not in columns:
            conn.execute("ALTER TABLE payments ADD COLUMN reference TEXT")
        conn.execute(
            "UPDATE payments SET"
            " created_at = CASE WHEN json_type(doc, '$.created_at') IN ('integer', 'real')"
            " THEN json_extract(doc, '$.created_at') END,"
            " reference = CASE WHEN json_type(doc, '$.reference') = 'text'"
            " THEN json_extract(doc, '$.reference') END"
        )
        for spec in SEARCH_INDEXES.values():
            conn.execute(f"CREATE INDEX IF NOT EXISTS {spec}")
        ntf_columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(notifications)")}
        for column in ("merchant_id", "type"):
            if column not in ntf_columns:
                conn.execute(f"ALTER TABLE notifications ADD COLUMN {column} TEXT")
        conn.execute(
            "UPDATE notifications SET"
            " merchant_id = CASE WHEN json_type(doc, '$.merchant_id') = 'text'"
            " THEN json_extract(doc, '$.merchant_id') END,"
            " type = CASE WHEN json_type(doc, '$.type') = 'text'"
            " THEN json_extract(doc, '$.type') END"
        )
        for spec in EVENT_INDEXES:
            conn.execute(f"CREATE INDEX IF NOT EXISTS {spec}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
