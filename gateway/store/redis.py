"""Redis backend: payments, idempotency records and leases shared by several replicas.

Key layout (every Lua script touches keys of ONE hash slot, so this works on Redis
Cluster too):

* ``gw:{<payment_id>}:doc`` - hash ``{v: <version>, doc: <JSON>}``
* ``gw:{<payment_id>}:events`` - list of JSON events, append order
* ``gw:pref:{<provider>}:<reference>`` - payment id (derived index, see below)
* ``gw:unresolved`` - sorted set, member payment id, score ``updated_at`` (derived index)
* ``gw:idem:{<sha256 hex of scope + "\\0" + key>}`` - hash of the idempotency record
  (``fp``, ``state``, ``lease_until``/``created_at`` in server milliseconds,
  ``response``), expired by Redis (PEXPIRE) after its ttl
* ``gw:lease:{<name>}`` - string holding the owner, expired by Redis (PX)
* ``gw:ix:{<merchant digest>}:all`` / ``:st:<status>`` / ``:pv:<provider>`` /
  ``:ref:<reference>`` - the search indexes (SPEC 3.1): per merchant, sorted sets of
  payment ids scored by ``created_at``; see "Search indexes" below.

Atomic steps are Lua scripts: insert (fail if exists), update (CAS on ``v`` + RPUSH of
the events), the idempotency claim / completion, lease renew / release. A new payment's
hot path is two of them, one round trip each: the claim with the payment's insert
(``claim_insert``: the write-ahead record) and the update that records the provider's
answer with the idempotency completion (issue #15).

The two derived indexes are written by the same insert / update script as the doc (one
round trip; they were separate commands before and after it), so they change only when
the write succeeds:

* a doc that belongs in the reconciliation index: ``ZADD GT`` (and the provider
  reference pointer is set by every write that has one);
* a doc that does not belong there: the member is removed only if its score is not newer
  than this doc's ``updated_at``.

Readers still re-check every candidate against the current doc, so stale entries (an old
reference, entries written by an older version of this backend) are filtered out.

Search indexes (SPEC 3.1) are NOT derived that way: they change inside the insert and
update scripts, in the same atomic step as the doc (the update script reads the old doc
and moves the member out of the old status / provider / reference set), so a capture
shows under ``captured`` and no longer under ``authorized`` the moment it is written.
Equal scores order members by id bytes, so ``ZREVRANGE`` is exactly the page order
``(created_at desc, id desc)``; a page is one read-only script (:data:`_SEARCH`) that
walks the index and returns the page's docs too: one round trip, and a consistent
snapshot (no doc can change between reading the index and reading the docs).

Redis Cluster, honestly: the index keys of a merchant share one hash tag (the
merchant's digest) and so live on the merchant's slot, while a payment's own keys live
on the ``{<payment_id>}`` slot. The insert / update scripts write both, and the search
script reads both, so they cross slots and a Cluster would refuse them (CROSSSLOT), as
it already would the update script that writes ``{ntf}`` keys with the payment. The
keys of the old status etc. and of the docs are also built inside the scripts from
prefix arguments (like the outbox claim does), which Cluster does not allow either.
This backend therefore needs one Redis primary (with replicas / Sentinel), where each
script is atomic (the derived indexes, written inside the scripts too, rely on that).
Running on Cluster would mean tagging a payment's keys with its merchant (one slot per
merchant) so that all of a merchant's keys share a slot, which this layout does not do.

Connections: a blocking pool of ``pool_size`` + a background reserve, and a per-request
budget taken at a request's first store operation (:mod:`gateway.store.pool`): a request
waits ``pool_timeout_s`` for it there (then StoreError, before anything is claimed) and
never waits on the pool later.

No automatic command retries: a lost reply to a CAS or claim must surface as
:class:`StoreError`, never be silently re-sent (a re-sent reservation could be applied
twice by a caller that re-reads). Connection and protocol errors become
:class:`StoreError`; ``ping()`` returns False instead.

The semantics both backends share are written down in :mod:`gateway.store`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError, WatchError

from gateway.store.base import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT_S,
    AlreadyExists,
    Claim,
    ClaimOutcome,
    Completion,
    EventSearch,
    IdempotencyRecord,
    PaymentInsert,
    PaymentQuery,
    PaymentSearch,
    Store,
    StoreError,
    check_ledger_entry,
    dumps,
    in_reconcile_index,
    new_notification,
    requeue,
    search_fields,
    search_reference,
    settle_notification,
)
from gateway.store.pool import BudgetedPool, RequestBudget

log = logging.getLogger(__name__)

UNRESOLVED_KEY = "gw:unresolved"

# Search index maintenance shared by the insert and update scripts. ``p`` is the
# merchant's key prefix ('' = the doc is not searchable), ``sc`` the created_at score,
# ``st`` the status, ``pv`` / ``ref`` ':' .. provider / reference, or '' when absent.
_IX_LUA = """
local function ix_put(p, id, sc, st, pv, ref)
  if p == '' then return end
  redis.call('ZADD', p .. 'all', sc, id)
  redis.call('ZADD', p .. 'st:' .. st, sc, id)
  if pv ~= '' then redis.call('ZADD', p .. 'pv' .. pv, sc, id) end
  if ref ~= '' then redis.call('ZADD', p .. 'ref' .. ref, sc, id) end
end
local function ix_enc(x)
  if type(x) == 'string' then return ':' .. x end
  return ''
end
local function ix_drop_old(p, id, old, st, pv, ref)
  if p == '' or not old then return end
  local ok, o = pcall(cjson.decode, old)
  if not ok or type(o) ~= 'table' then return end
  if type(o.status) == 'string' and o.status ~= st then
    redis.call('ZREM', p .. 'st:' .. o.status, id)
  end
  local opv = ix_enc(o.provider)
  if opv ~= '' and opv ~= pv then redis.call('ZREM', p .. 'pv' .. opv, id) end
  local oref = ix_enc(o.reference)
  if oref ~= '' and oref ~= ref then redis.call('ZREM', p .. 'ref' .. oref, id) end
end
"""

# The derived indexes (module docstring), kept in the same script as the write: the
# provider reference pointer (``pk`` '' = none) and the reconciliation index ``uk``
# (``indexed`` '1': the doc belongs there; else its entry is removed unless newer).
_DERIVED_LUA = """
local function derived(uk, pk, id, updated, indexed)
  if pk ~= '' then redis.call('SET', pk, id) end
  if indexed == '1' then
    redis.call('ZADD', uk, 'GT', updated, id)
  else
    local s = redis.call('ZSCORE', uk, id)
    if s and tonumber(s) <= tonumber(updated) then redis.call('ZREM', uk, id) end
  end
end
"""

# An insert, as a function of the scripts that create payments. k: doc, events, the
# reconciliation index keys; a: the ARGV index of the first of: doc, id, ix prefix,
# score, status, provider, reference, updated_at, indexed, provider reference key ('' =
# none), number of events, events...
_INSERT_LUA = _IX_LUA + _DERIVED_LUA + """
local function insert(dk, ek, uk, a)
  if redis.call('EXISTS', dk) == 1 then return 0 end
  redis.call('HSET', dk, 'v', '1', 'doc', ARGV[a])
  redis.call('DEL', ek)
  for i = a + 11, a + 10 + tonumber(ARGV[a + 10]) do redis.call('RPUSH', ek, ARGV[i]) end
  ix_put(ARGV[a + 2], ARGV[a + 1], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6])
  derived(uk, ARGV[a + 9], ARGV[a + 1], ARGV[a + 7], ARGV[a + 8])
  return 1
end
"""

# KEYS: doc, events, reconciliation index. ARGV: as _INSERT_LUA from 1.
_INSERT = _INSERT_LUA + """
return insert(KEYS[1], KEYS[2], KEYS[3], 1)
"""

# Ledger (SPEC 16). (The provider's time index ``gw:ledger:by:<provider>`` is built
# inside, from the entry, like the outbox prefixes: not Cluster-safe, as documented above.)
# Per entry 3 KEYS: the entry key, the payment's ledger list ('' when
# the entry has no payment: then a dummy key is passed and not written), the merchant's
# balance hash for the entry's currency; 5 ARGV: id, entry JSON, amount, debit, credit,
# plus 1: '1' if the payment list is to be written. An id already recorded is skipped.
_LEDGER_LUA = """
local function ledger_put(ekey, plist, bal, id, entry, amount, debit, credit, listed)
  if redis.call('SET', ekey, entry, 'NX') then
    if listed == '1' then redis.call('RPUSH', plist, id) end
    local parsed = cjson.decode(entry)
    if type(parsed['provider']) == 'string' then
      redis.call('ZADD', 'gw:ledger:by:' .. parsed['provider'], parsed['created_at'], id)
    end
    redis.call('HINCRBY', bal, debit, amount)
    redis.call('HINCRBY', bal, credit, -tonumber(amount))
    return 1
  end
  return 0
end
"""

# KEYS / ARGV: per entry as in _LEDGER_LUA (3 keys, 6 args). Returns how many were new.
_LEDGER_APPEND = _LEDGER_LUA + """
local n, k = 0, 1
for a = 1, #ARGV, 6 do
  n = n + ledger_put(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a], ARGV[a + 1], ARGV[a + 2],
                     ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
  k = k + 3
end
return n
"""

# The idempotency completion (see _CLAIM_LUA), as a function of the scripts.
_COMPLETE_LUA = """
local function complete(ik, response, ttl)
  if redis.call('EXISTS', ik) == 0 then return 0 end
  redis.call('HSET', ik, 'state', 'completed', 'response', response)
  redis.call('PEXPIRE', ik, ttl)
  return 1
end
"""

# KEYS: doc, events, reconciliation index, idempotency record (the doc key when there is
#       no completion), then per ledger entry its 3 keys (_LEDGER_LUA), then per
#       notification: its key, the due zset, the payment's list, the merchant's three
#       listing zsets and the sequence counter (see _NTF_ENQUEUE).
# ARGV: expected version, new version, doc, id, ix prefix, score, status, provider,
#       reference (search index, see _IX_LUA), updated_at, indexed, provider reference
#       key (derived indexes, see _DERIVED_LUA), completion response ('' = none), its
#       ttl ms, number of events, events..., number of ledger entries, per entry its 6
#       args, then per notification: id, stored doc, due at. One atomic change (SPEC 3.2:
#       the notification a change owes is written with it; SPEC 3.1: so is the search
#       index; SPEC 16: so are the ledger entries; SPEC 4: so is the request's stored
#       answer when this is its last write).
_UPDATE = _IX_LUA + _LEDGER_LUA + _DERIVED_LUA + _COMPLETE_LUA + """
local v = redis.call('HGET', KEYS[1], 'v')
if v ~= ARGV[1] then return 0 end
local old = redis.call('HGET', KEYS[1], 'doc')
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'doc', ARGV[3])
ix_drop_old(ARGV[5], ARGV[4], old, ARGV[7], ARGV[8], ARGV[9])
ix_put(ARGV[5], ARGV[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
derived(KEYS[3], ARGV[12], ARGV[4], ARGV[10], ARGV[11])
if ARGV[13] ~= '' then complete(KEYS[4], ARGV[13], ARGV[14]) end
local n = tonumber(ARGV[15])
for i = 16, 15 + n do redis.call('RPUSH', KEYS[2], ARGV[i]) end
local a, k = 17 + n, 5
for _ = 1, tonumber(ARGV[16 + n]) do
  ledger_put(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[a], ARGV[a + 1], ARGV[a + 2],
             ARGV[a + 3], ARGV[a + 4], ARGV[a + 5])
  a, k = a + 6, k + 3
end
while a <= #ARGV do
  if redis.call('EXISTS', KEYS[k]) == 0 then
    redis.call('HSET', KEYS[k], 'doc', ARGV[a + 1])
    redis.call('ZADD', KEYS[k + 1], ARGV[a + 2], ARGV[a])
    redis.call('RPUSH', KEYS[k + 2], ARGV[a])
    local seq = redis.call('INCR', KEYS[k + 6])
    for i = k + 3, k + 5 do redis.call('ZADD', KEYS[i], seq, ARGV[a]) end
  end
  a, k = a + 3, k + 7
end
return 1
"""

# The claim, as a function of the scripts: ik the record, fp the fingerprint, lease /
# ttl in ms. Returns {outcome, fp, state, lease_until ms, created_at ms, response or '',
# now ms}.
_CLAIM_LUA = """
local function claim(ik, fp, lease_ms, ttl_ms)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local lease = tonumber(lease_ms)
  local keep = math.max(tonumber(ttl_ms), lease)
  local r = redis.call('HMGET', ik, 'fp', 'state', 'lease_until', 'created_at', 'response')
  if not r[1] then
    local lu = now + lease
    redis.call('DEL', ik)
    redis.call('HSET', ik, 'fp', fp, 'state', 'in_progress',
               'lease_until', tostring(lu), 'created_at', tostring(now))
    redis.call('PEXPIRE', ik, keep)
    return {'new', fp, 'in_progress', tostring(lu), tostring(now), '', tostring(now)}
  end
  local resp = r[5] or ''
  if r[1] ~= fp then
    return {'mismatch', r[1], r[2], r[3], r[4], resp, tostring(now)}
  end
  if r[2] == 'completed' then
    return {'completed', r[1], r[2], r[3], r[4], resp, tostring(now)}
  end
  if tonumber(r[3]) > now then
    return {'in_progress', r[1], r[2], r[3], r[4], resp, tostring(now)}
  end
  local lu = now + lease
  redis.call('HSET', ik, 'lease_until', tostring(lu))
  if redis.call('PTTL', ik) < keep then redis.call('PEXPIRE', ik, keep) end
  return {'taken_over', r[1], r[2], tostring(lu), r[4], resp, tostring(now)}
end
"""

# KEYS: the record. ARGV: fingerprint, lease ms, ttl ms. Returns claim()'s list.
_CLAIM = _CLAIM_LUA + """
return claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
"""

# The claim and, when the caller gets it, the payment's insert (the write-ahead record
# costs no round trip of its own). KEYS: the record, then the insert's doc, events,
# reconciliation index. ARGV: fingerprint, lease ms, ttl ms, then the insert's
# (_INSERT_LUA from 4). Returns claim()'s list plus '1' if the payment was inserted, and
# when the claim is completed the payment's doc ('' if none: a replay reads it here).
_CLAIM_INSERT = _CLAIM_LUA + _INSERT_LUA + """
local res = claim(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
local made, doc = '0', ''
if res[1] == 'new' or res[1] == 'taken_over' then
  if insert(KEYS[2], KEYS[3], KEYS[4], 4) == 1 then made = '1' end
elseif res[1] == 'completed' then
  doc = redis.call('HGET', KEYS[2], 'doc') or ''
end
table.insert(res, made)
table.insert(res, doc)
return res
"""

# KEYS: the record. ARGV: response JSON, ttl ms
_COMPLETE = _COMPLETE_LUA + """
return complete(KEYS[1], ARGV[1], ARGV[2])
"""

_LEASE_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_LEASE_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# ARGV: member, updated_at. Remove the member unless its score is newer.
_ZREM_IF_NOT_NEWER = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) <= tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""

# Notification outbox. KEYS: event hash, due zset, payment list, then the merchant's
# listing zsets (all, pending, its type) and the sequence counter (see
# notification_listing_keys). ARGV: id, doc, due. The listing zsets (score: the outbox's
# own counter) list the merchant's events in queue order for GET /v1/events (SPEC 3.2).
_NTF_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'doc', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
local seq = redis.call('INCR', KEYS[7])
for i = 4, 6 do redis.call('ZADD', KEYS[i], seq, ARGV[1]) end
return 1
"""

# An event of a payment left the queue (delivered / failed): its next pending event, which
# the claim may have moved behind it, is due now at the latest. KEYS: due zset, payment
# list. ARGV: now.
_NTF_WAKE_NEXT = """
for _, other in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  if redis.call('ZSCORE', KEYS[1], other) then
    redis.call('ZADD', KEYS[1], 'LT', ARGV[1], other)
    return 1
  end
end
return 0
"""

# KEYS: due zset. ARGV: now, limit, lease_until, owner, event key prefix, payment list
# prefix. Returns a flat list {doc, lease_owner, lease_until, ...}. Only a payment's
# earliest pending event (pending = in the due zset) is claimed (SPEC 3.2: in sequence
# order, one in flight per payment); a later one is moved to just after the event it
# waits for, so blocked events never fill the claim window.
_NTF_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local k = ARGV[5] .. id
  local doc = redis.call('HGET', k, 'doc')
  if doc then
    local blocker = nil
    local ok, parsed = pcall(cjson.decode, doc)
    local pid = ok and type(parsed) == 'table' and parsed['payment_id']
    if type(pid) == 'string' and pid ~= '' then
      for _, other in ipairs(redis.call('LRANGE', ARGV[6] .. pid, 0, -1)) do
        if other == id then break end
        local s = redis.call('ZSCORE', KEYS[1], other)
        if s then blocker = tonumber(s) break end
      end
    end
    if blocker then
      redis.call('ZADD', KEYS[1], math.max(blocker, tonumber(ARGV[1])) + 0.001, id)
    else
      redis.call('HSET', k, 'lease_owner', ARGV[4], 'lease_until', ARGV[3])
      redis.call('ZADD', KEYS[1], ARGV[3], id)
      table.insert(out, doc)
      table.insert(out, ARGV[4])
      table.insert(out, ARGV[3])
    end
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# One page of search (read only). KEYS: the index sets of the filters (all of them must
# hold a member); the smallest is walked, by rank, the others are checked with ZSCORE.
# ARGV: upper score ('+inf' = none), '1' if the upper score itself is included, lower
# score ('' = none, included), cursor score ('' = none) and cursor id: a member at
# exactly the cursor score is kept only if its id sorts before the cursor's (bytewise:
# Lua's < on strings follows the locale), page size, doc key prefix and suffix.
# Returns {1 if more match after the page else 0, doc JSON...}.
_SEARCH = """
local best, bestn = 1, redis.call('ZCARD', KEYS[1])
for i = 2, #KEYS do
  local n = redis.call('ZCARD', KEYS[i])
  if n < bestn then best, bestn = i, n end
end
local key = KEYS[best]
local pos = 0
if ARGV[1] ~= '+inf' then
  if ARGV[2] == '1' then pos = redis.call('ZCOUNT', key, '(' .. ARGV[1], '+inf')
  else pos = redis.call('ZCOUNT', key, ARGV[1], '+inf') end
end
local lo = nil
if ARGV[3] ~= '' then lo = tonumber(ARGV[3]) end
local cs = nil
if ARGV[4] ~= '' then cs = tonumber(ARGV[4]) end
local cid = ARGV[5]
local limit = tonumber(ARGV[6])
local want = limit + 1
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local out, batch, done = {}, want + 8, false
while not done do
  local page = redis.call('ZREVRANGE', key, pos, pos + batch - 1, 'WITHSCORES')
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local m, s = page[i], tonumber(page[i + 1])
    if lo and s < lo then done = true break end
    local keep = not (cs and s == cs and not before(m, cid))
    if keep then
      for k = 1, #KEYS do
        if k ~= best and not redis.call('ZSCORE', KEYS[k], m) then keep = false break end
      end
    end
    if keep then
      out[#out + 1] = m
      if #out >= want then done = true break end
    end
  end
  pos = pos + batch
  batch = math.min(batch * 2, 1000)
end
local res = {0}
if #out > limit then res[1] = 1 end
for i = 1, math.min(#out, limit) do
  local doc = redis.call('HGET', ARGV[7] .. out[i] .. ARGV[8], 'doc')
  if doc then res[#res + 1] = doc end
end
return res
"""

# KEYS: doc. ARGV: version, id, ix prefix, score, status, provider, reference. Index a
# payment written before the search indexes existed, unless it changed since it was read
# (its update then indexed it already).
_IX_BACKFILL = _IX_LUA + """
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[1] then return 0 end
ix_put(ARGV[3], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
"""

_SCRIPTS = {
    "search": _SEARCH,
    "ix_backfill": _IX_BACKFILL,
    "ntf_enqueue": _NTF_ENQUEUE,
    "ntf_wake_next": _NTF_WAKE_NEXT,
    "ntf_claim": _NTF_CLAIM,
    "insert": _INSERT,
    "update": _UPDATE,
    "ledger_append": _LEDGER_APPEND,
    "claim": _CLAIM,
    "claim_insert": _CLAIM_INSERT,
    "complete": _COMPLETE,
    "lease_renew": _LEASE_RENEW,
    "lease_release": _LEASE_RELEASE,
    "zrem_if_not_newer": _ZREM_IF_NOT_NEWER,
}

_STALE_MISSING_S = 3600.0  # an index entry without a doc this old is dropped by queries


def doc_key(payment_id: str) -> str:
    return f"gw:{{{payment_id}}}:doc"


def events_key(payment_id: str) -> str:
    return f"gw:{{{payment_id}}}:events"


def ledger_key(payment_id: str) -> str:
    """The payment's ledger entry ids, in order (the payment's slot)."""
    return f"gw:{{{payment_id}}}:ledger"


def ledger_entry_key(entry_id: str) -> str:
    return f"gw:ledger:e:{entry_id}"


def ledger_balance_key(merchant_id: str, currency: str) -> str:
    """Hash: account -> debits minus credits of the merchant's entries in ``currency``."""
    return f"gw:ledger:bal:{merchant_id}:{currency}"


def settlement_key(provider: str, settled_on: str) -> str:
    """Hash: line id -> imported settlement line of ``provider`` settled that day."""
    return f"gw:settle:{provider}:{settled_on}"


def _ledger_parts(entry: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The 3 keys and 6 args of one entry for _LEDGER_LUA (checked first)."""
    check_ledger_entry(entry)
    pid = entry.get("payment_id")
    listed = isinstance(pid, str) and bool(pid)
    keys = [ledger_entry_key(entry["id"]),
            ledger_key(str(pid)) if listed else ledger_entry_key(entry["id"]),
            ledger_balance_key(entry["merchant_id"], entry["currency"])]
    args = [entry["id"], dumps(entry), str(int(entry["amount"])), entry["debit"],
            entry["credit"], "1" if listed else "0"]
    return keys, args


def pref_key(provider: str, reference: str) -> str:
    return f"gw:pref:{{{provider}}}:{reference}"


def search_prefix(merchant_id: str) -> str:
    """Prefix of the merchant's search index keys; the hash tag is a digest of the
    merchant id (any string) so that keys of two merchants can never be confused."""
    digest = hashlib.sha256(merchant_id.encode()).hexdigest()[:32]
    return f"gw:ix:{{{digest}}}:"


def search_key(merchant_id: str, kind: str, value: str = "") -> str:
    """One search index: ``all``, or ``st`` / ``pv`` / ``ref`` with the status, provider
    or reference."""
    prefix = search_prefix(merchant_id)
    return prefix + "all" if kind == "all" else f"{prefix}{kind}:{value}"


def search_index_args(doc: dict[str, Any]) -> list[str]:
    """ix prefix, score, status, provider, reference as the insert / update scripts take
    them (see _IX_LUA); prefix '' when the doc is not searchable."""
    fields = search_fields(doc)
    if fields is None:
        return ["", "0", str(doc["status"]), "", ""]
    provider, reference = doc.get("provider"), search_reference(doc)
    return [search_prefix(fields[0]), repr(fields[1]), str(doc["status"]),
            f":{provider}" if isinstance(provider, str) else "",
            "" if reference is None else f":{reference}"]


def idem_key(scope: str, key: str) -> str:
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
    return f"gw:idem:{{{digest}}}"


def lease_key(name: str) -> str:
    return f"gw:lease:{{{name}}}"


def webhook_event_key(provider: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{provider}\0{event_id}".encode()).hexdigest()
    return f"gw:whevt:{{{digest}}}"


# Notification outbox: every key in ONE hash slot (tag ``{ntf}``) so enqueue / claim /
# settle are single-slot atomic steps (Lua, or WATCH/MULTI) on Redis Cluster too.
NTF_DUE_KEY = "gw:{ntf}:due"  # zset of pending ids; score = next attempt or lease expiry
_NTF_EVENT_PREFIX = "gw:{ntf}:e:"  # hash {doc: JSON without the lease, lease_owner, lease_until}


def notification_key(event_id: str) -> str:
    return _NTF_EVENT_PREFIX + event_id


_NTF_PAYMENT_PREFIX = "gw:{ntf}:p:"  # list of a payment's event ids, in enqueue order
NTF_SEQ_KEY = "gw:{ntf}:seq"  # counter: the order events were queued in


def notification_merchant_key(merchant_id: str, by: str = "all", value: str = "") -> str:
    """A zset of one merchant's event ids, score = :data:`NTF_SEQ_KEY` at enqueue: all of
    them (``by="all"``), those in one delivery state (``by="state"``; moved on every state
    change) or of one type (``by="type"``)."""
    suffix = "" if by == "all" else f":{by}:{value}"
    return f"gw:{{ntf}}:m:{merchant_id}{suffix}"


def notification_listing_keys(doc: dict[str, Any]) -> list[str]:
    """What an enqueue writes besides the event: the merchant's all / pending / type
    zsets, then the sequence counter."""
    merchant = str(doc["merchant_id"])
    return [notification_merchant_key(merchant),
            notification_merchant_key(merchant, "state", "pending"),
            notification_merchant_key(merchant, "type", str(doc.get("type") or "")),
            NTF_SEQ_KEY]


def notification_payment_key(payment_id: str) -> str:
    return _NTF_PAYMENT_PREFIX + payment_id


UNMATCHED_WEBHOOKS_KEY = "gw:webhooks:unmatched"
#: Unmatched webhooks kept (the oldest beyond this are dropped).
UNMATCHED_WEBHOOKS_MAX = 10_000


def _ms(seconds: float) -> int:
    return max(1, math.ceil(float(seconds) * 1000))


def _payment_fields(doc: dict[str, Any]) -> tuple[str, float]:
    pid = doc.get("id")
    if not isinstance(pid, str) or not pid:
        raise ValueError("payment doc needs a non-empty string 'id'")
    updated_at = doc.get("updated_at")
    if isinstance(updated_at, bool) or not isinstance(updated_at, int | float):
        raise ValueError("payment doc needs a numeric 'updated_at' (unix seconds)")
    if not isinstance(doc.get("status"), str):
        raise ValueError("payment doc needs a string 'status'")
    return pid, float(updated_at)


def _derived_args(pid: str, doc: dict[str, Any], updated_at: float) -> list[str]:
    """updated_at, indexed, provider reference key as _DERIVED_LUA takes them."""
    provider, reference = doc.get("provider"), doc.get("provider_reference")
    has_ref = isinstance(provider, str) and isinstance(reference, str) and reference != ""
    return [repr(updated_at), "1" if in_reconcile_index(doc) else "0",
            pref_key(str(provider), str(reference)) if has_ref else ""]


def _insert_args(doc: dict[str, Any], events: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The payment id and _INSERT_LUA's arguments (the doc stored at version 1)."""
    pid, updated_at = _payment_fields(doc)
    stored = {**doc, "version": 1}
    args = [dumps(stored), pid, *search_index_args(stored),
            *_derived_args(pid, stored, updated_at), str(len(events))]
    args.extend(dumps(e) for e in events)
    return pid, args


def _query_match(doc: dict[str, Any], query: PaymentQuery) -> bool:
    updated_at = doc.get("updated_at")
    if not isinstance(updated_at, int | float) or updated_at >= query.updated_before:
        return False
    if doc.get("status") not in query.statuses or not in_reconcile_index(doc):
        return False
    if query.provider is not None and doc.get("provider") != query.provider:
        return False
    return all(doc.get(k) == v for k, v in query.extra.items())


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except RedisError as exc:
        raise StoreError(f"redis: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"redis: {exc}") from exc


#: Written by :meth:`RedisStore.ping` (readiness = the store takes a write).
HEALTH_KEY = "gw:health"

#: Holds :data:`SEARCH_INDEX_VERSION` once every payment stored before the search indexes
#: existed has been indexed (:meth:`RedisStore.index_existing_payments`).
SEARCH_READY_KEY = "gw:ix:ready"
SEARCH_INDEX_VERSION = "1"


class RedisStore(Store):
    """Store on one Redis database; see the module docstring for the key layout."""

    def __init__(
        self,
        url: str,
        *,
        socket_timeout_s: float = 5.0,
        connect_timeout_s: float = 2.0,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    ) -> None:
        self._url = url
        self._socket_timeout_s = socket_timeout_s
        self._connect_timeout_s = connect_timeout_s
        #: requests using the store at once; see gateway.store.pool
        self.budget = RequestBudget(pool_size, pool_timeout_s, "redis")
        self._client: aredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._backfill: asyncio.Task[int] | None = None  # see gateway.store.redis_backfill

    # lifecycle -----------------------------------------------------------------
    async def open(self) -> None:
        """Create the client. Connects lazily: a down Redis shows in ``ping()``."""
        if self._client is not None:
            return
        kwargs: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": self._socket_timeout_s,
            "socket_connect_timeout": self._connect_timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 30,
        }
        try:
            from redis.maint_notifications import MaintNotificationsConfig
        except ImportError:  # redis-py without maintenance notifications
            pass
        else:
            # While they are on (redis-py's default "auto"), its pool hands out pooled
            # connections without checking whether the server closed them, so after a
            # Redis restart or failover every one of them failed once (a 503 each, once
            # /readyz was already 200). They need RESP3 push messages; this client speaks
            # RESP2, so nothing is lost by turning them off.
            kwargs["maint_notifications_config"] = MaintNotificationsConfig(enabled=False)
        # Waits for a connection instead of raising (see gateway.store.pool).
        client = aredis.Redis.from_pool(BudgetedPool.from_url(self._url, budget=self.budget,
                                                              **kwargs))
        self._scripts = {name: client.register_script(lua) for name, lua in _SCRIPTS.items()}
        self._client = client
        from gateway.store import redis_backfill  # events queued before listing zsets

        self._backfill = redis_backfill.start(client)

    async def listing_backfill(self) -> int:
        """Wait for the start's listing backfill; how many events it listed."""
        return await self._backfill if self._backfill is not None else 0

    async def close(self) -> None:
        from gateway.store import redis_backfill

        await redis_backfill.stop(self._backfill)
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass

    @property
    def _r(self) -> aredis.Redis:
        if self._client is None:
            raise StoreError("Redis store is not open")
        return self._client

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        if self._client is None:
            raise StoreError("Redis store is not open")
        return await self._scripts[script](keys=keys, args=args)

    async def ping(self) -> bool:
        if self._client is None:
            return False
        try:  # ready means able to take a write (not a read-only replica, not out of memory)
            return bool(await self._client.set(HEALTH_KEY, "1", ex=60))
        except Exception:
            return False

    async def persistence(self) -> str | None:
        """How the server keeps writes across a restart: ``"aof"``, ``"rdb"``, ``"none"``,
        or None when it cannot be told (``CONFIG`` disabled, as on some managed Redis)."""
        try:
            aof = await self._r.config_get("appendonly")
            save = await self._r.config_get("save")
        except (RedisError, OSError) as exc:
            if isinstance(exc, RedisError) and not isinstance(exc, ConnectionError):
                return None
            raise StoreError(f"redis: {exc}") from exc
        if str(aof.get("appendonly", "")).lower() == "yes":
            return "aof"
        if str(save.get("save", "")).strip():
            return "rdb"
        return "none"

    # payments ------------------------------------------------------------------
    async def insert_payment(self, doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
        pid, args = _insert_args(doc, events)
        with _errors():
            ok = await self._eval("insert", [doc_key(pid), events_key(pid), UNRESOLVED_KEY],
                                  args)
        if not ok:
            raise AlreadyExists(f"payment {pid} already exists")
        doc["version"] = 1

    async def get_payment(self, payment_id: str) -> dict[str, Any] | None:
        with _errors():
            raw = await self._r.hget(doc_key(payment_id), "doc")
        return None if raw is None else json.loads(raw)

    async def update_payment(
        self, doc: dict[str, Any], expected_version: int, events: list[dict[str, Any]],
        notifications: Sequence[dict[str, Any]] = (),
        ledger: Sequence[dict[str, Any]] = (),
        completion: Completion | None = None,
    ) -> bool:
        pid, updated_at = _payment_fields(doc)
        new_version = int(expected_version) + 1
        stored = {**doc, "version": new_version}
        args = [str(int(expected_version)), str(new_version), dumps(stored), pid,
                *search_index_args(stored), *_derived_args(pid, stored, updated_at)]
        keys = [doc_key(pid), events_key(pid), UNRESOLVED_KEY]
        if completion is None:
            keys.append(doc_key(pid))  # not written
            args += ["", "0"]
        else:
            keys.append(idem_key(completion.scope, completion.key))
            args += [dumps(completion.response), str(_ms(completion.ttl_s))]
        args.append(str(len(events)))
        args.extend(dumps(e) for e in events)
        args.append(str(len(ledger)))
        for entry in ledger:
            entry_keys, entry_args = _ledger_parts(entry)
            keys += entry_keys
            args += entry_args
        for record in notifications:
            ntf = new_notification(record)
            eid = str(ntf["id"])
            keys += [notification_key(eid), NTF_DUE_KEY,
                     notification_payment_key(str(ntf.get("payment_id") or "")),
                     *notification_listing_keys(ntf)]
            args += [eid, self._ntf_stored(ntf), repr(float(ntf["next_attempt_at"]))]
        with _errors():
            ok = await self._eval("update", keys, args)
        if not ok:
            return False
        doc["version"] = new_version
        if completion is not None:
            completion.written = True
        return True

    async def list_events(self, payment_id: str) -> list[dict[str, Any]]:
        with _errors():
            raws = await self._r.lrange(events_key(payment_id), 0, -1)
        return [json.loads(r) for r in raws]

    async def find_by_provider_reference(self, provider: str, reference: str) -> str | None:
        with _errors():
            raw_id = await self._r.get(pref_key(provider, reference))
            if raw_id is None:
                return None
            pid = str(raw_id)
            doc = await self.get_payment(pid)
        if doc is None or doc.get("provider") != provider:
            return None
        return pid if doc.get("provider_reference") == reference else None

    async def query_payments(self, query: PaymentQuery) -> list[dict[str, Any]]:
        if query.limit <= 0 or not query.statuses:
            return []
        batch = max(100, 2 * query.limit)
        found: dict[str, dict[str, Any]] = {}
        offset = 0
        with _errors():
            while len(found) < query.limit:
                members = await self._r.zrangebyscore(
                    UNRESOLVED_KEY,
                    "-inf",
                    f"({float(query.updated_before)!r}",
                    start=offset,
                    num=batch,
                    withscores=False,
                )
                ids = [str(m) for m in members]
                if not ids:
                    break
                offset += len(ids)
                async with self._r.pipeline(transaction=False) as pipe:
                    for pid in ids:
                        pipe.hget(doc_key(pid), "doc")
                    raws = await pipe.execute()
                for pid, raw in zip(ids, raws, strict=True):
                    if raw is None:
                        await self._drop_orphan(pid)
                        continue
                    doc = json.loads(raw)
                    if _query_match(doc, query):
                        found[pid] = doc
        docs = sorted(found.values(), key=lambda d: (float(d["updated_at"]), str(d["id"])))
        return docs[: query.limit]

    async def search_payments(self, query: PaymentSearch) -> tuple[list[dict[str, Any]], bool]:
        if query.limit <= 0:
            return [], False
        m = query.merchant_id
        keys = [search_key(m, kind, value) for kind, value in
                (("ref", query.reference), ("st", query.status), ("pv", query.provider))
                if value is not None] or [search_key(m, "all")]
        upper, inclusive, cursor, cursor_id = "+inf", "0", "", ""
        if query.created_lt is not None:
            upper = repr(float(query.created_lt))
        if query.starting_after is not None:
            c = float(query.starting_after[0])
            if query.created_lt is None or c < float(query.created_lt):
                upper, inclusive = repr(c), "1"
                cursor, cursor_id = repr(c), str(query.starting_after[1])
        lower = "" if query.created_gte is None else repr(float(query.created_gte))
        prefix, suffix = doc_key("\0").split("\0")
        with _errors():
            res = await self._eval("search", keys, [upper, inclusive, lower, cursor, cursor_id,
                                                    int(query.limit), prefix, suffix])
        docs = [json.loads(raw) for raw in res[1:]]
        # The gateway never changes a payment's merchant_id; should a doc ever move, the
        # index entries its old merchant kept must still not show it to that merchant.
        return [d for d in docs if d.get("merchant_id") == m], bool(int(res[0]))

    async def index_existing_payments(self, batch: int = 1000) -> int | None:
        """Add the payments a version without search indexes stored to them (the Redis
        counterpart of the SQLite upgrade on open); None when :data:`SEARCH_READY_KEY`
        says it was done, else how many payments were (re)indexed. Idempotent, and safe
        beside live writers: a payment whose version changed since it was read is left
        to its update, which indexes it. Payments written later by a gateway of the OLD
        version are not indexed: upgrade every replica before this runs (or delete the
        key to run it again)."""
        n = 0
        with _errors():
            if await self._r.get(SEARCH_READY_KEY) == SEARCH_INDEX_VERSION:
                return None
            cursor: int = 0
            while True:
                cursor, keys = await self._r.scan(cursor, match="gw:{*}:doc", count=batch)
                if keys:
                    async with self._r.pipeline(transaction=False) as pipe:
                        for k in keys:
                            pipe.hmget(k, ["v", "doc"])
                        rows = await pipe.execute()
                    async with self._r.pipeline(transaction=False) as pipe:
                        for k, (v, raw) in zip(keys, rows, strict=True):
                            doc = json.loads(raw) if v is not None and raw is not None else None
                            if (not isinstance(doc, dict) or not isinstance(doc.get("id"), str)
                                    or doc_key(doc["id"]) != k
                                    or not isinstance(doc.get("status"), str)
                                    or search_fields(doc) is None):
                                continue
                            await self._scripts["ix_backfill"](
                                keys=[k], args=[v, doc["id"], *search_index_args(doc)],
                                client=pipe)
                            n += 1
                        await pipe.execute()
                if cursor == 0:
                    break
            await self._r.set(SEARCH_READY_KEY, SEARCH_INDEX_VERSION)
        return n

    async def _drop_orphan(self, pid: str) -> None:
        """Drop an index entry whose doc never got written (failed insert), once old."""
        await self._eval(
            "zrem_if_not_newer", [UNRESOLVED_KEY], [pid, repr(time.time() - _STALE_MISSING_S)]
        )

    # idempotency ---------------------------------------------------------------
    async def claim_idempotency(
        self, scope: str, key: str, fingerprint: str, lease_s: float, ttl_s: float,
        insert: PaymentInsert | None = None,
    ) -> Claim:
        keys = [idem_key(scope, key)]
        args: list[Any] = [fingerprint, _ms(lease_s), _ms(ttl_s)]
        if insert is not None:
            pid, insert_args = _insert_args(insert.doc, insert.events)
            keys += [doc_key(pid), events_key(pid), UNRESOLVED_KEY]
            args += insert_args
        with _errors():
            res = await self._eval("claim" if insert is None else "claim_insert", keys, args)
        created = insert is not None and str(res[7]) == "1"
        stored_doc = str(res[8]) if insert is not None else ""
        if created and insert is not None:
            insert.doc["version"] = 1
        outcome, fp, state, lease_until_ms, created_ms, response, now_ms = (
            str(x) for x in res[:7])
        record = IdempotencyRecord(
            fingerprint=fp,
            state=state,
            lease_until=float(lease_until_ms) / 1000,
            created_at=float(created_ms) / 1000,
            response=json.loads(response) if response else None,
        )
        claim = Claim(ClaimOutcome(outcome), record, created=created)
        if (stored_doc and claim.outcome is ClaimOutcome.COMPLETED and record.response
                and insert is not None
                and record.response.get("payment_id") == insert.doc.get("id")):
            claim.payment = json.loads(stored_doc)
        if claim.outcome is ClaimOutcome.IN_PROGRESS:
            remaining = (float(lease_until_ms) - float(now_ms)) / 1000
            claim.retry_after = float(max(1, math.ceil(remaining)))
        return claim

    async def complete_idempotency(
        self, scope: str, key: str, response: dict[str, Any], ttl_s: float
    ) -> None:
        with _errors():
            await self._eval("complete", [idem_key(scope, key)], [dumps(response), _ms(ttl_s)])

    async def release_idempotency(self, scope: str, key: str) -> None:
        with _errors():
            await self._r.delete(idem_key(scope, key))

    # leases --------------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        k, ms = lease_key(name), _ms(ttl_s)
        with _errors():
            if await self._r.set(k, owner, nx=True, px=ms):
                return True
            return bool(await self._eval("lease_renew", [k], [owner, ms]))

    async def release_lease(self, name: str, owner: str) -> None:
        with _errors():
            await self._eval("lease_release", [lease_key(name)], [owner])

    # provider webhooks -----------------------------------------------------------
    async def webhook_event_seen(self, provider: str, event_id: str) -> bool:
        with _errors():
            return bool(await self._r.exists(webhook_event_key(provider, event_id)))

    async def record_webhook_event(self, provider: str, event_id: str, ttl_s: float) -> bool:
        with _errors():
            return bool(await self._r.set(webhook_event_key(provider, event_id), "1", nx=True,
                                          px=_ms(ttl_s)))

    async def forget_webhook_event(self, provider: str, event_id: str) -> None:
        with _errors():
            await self._r.delete(webhook_event_key(provider, event_id))

    async def save_unmatched_webhook(self, provider: str, event: dict[str, Any]) -> None:
        entry = {**event, "provider": provider, "received_at": time.time()}
        with _errors():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.rpush(UNMATCHED_WEBHOOKS_KEY, dumps(entry))
                pipe.ltrim(UNMATCHED_WEBHOOKS_KEY, -UNMATCHED_WEBHOOKS_MAX, -1)
                await pipe.execute()

    async def list_unmatched_webhooks(self, limit: int = 100) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        with _errors():
            raws = await self._r.lrange(UNMATCHED_WEBHOOKS_KEY, 0, int(limit) - 1)
        return [json.loads(r) for r in raws]

    # merchant notification outbox ------------------------------------------------
    @staticmethod
    def _ntf_doc(raw_doc: Any, owner: Any, lease_until: Any) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(raw_doc)
        doc["lease_owner"] = str(owner) if owner else None
        doc["lease_until"] = float(lease_until) if lease_until else None
        return doc

    @staticmethod
    def _ntf_stored(doc: dict[str, Any]) -> str:
        return dumps({k: v for k, v in doc.items() if k not in ("lease_owner", "lease_until")})

    async def enqueue_notification(self, event: dict[str, Any]) -> bool:
        doc = new_notification(event)
        eid = str(doc["id"])
        pid = str(doc.get("payment_id") or "")
        with _errors():
            return bool(await self._eval(
                "ntf_enqueue",
                [notification_key(eid), NTF_DUE_KEY, notification_payment_key(pid),
                 *notification_listing_keys(doc)],
                [eid, self._ntf_stored(doc), repr(float(doc["next_attempt_at"]))],
            ))

    async def claim_due_notifications(
        self, now: float, limit: int, lease_s: float, owner: str
    ) -> list[dict[str, Any]]:
        if limit <= 0:
            return []
        lease_until = float(now) + float(lease_s)
        with _errors():
            flat = await self._eval(
                "ntf_claim", [NTF_DUE_KEY],
                [repr(float(now)), int(limit), repr(lease_until), owner, _NTF_EVENT_PREFIX,
                 _NTF_PAYMENT_PREFIX],
            )
        return [self._ntf_doc(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

    async def record_notification_attempt(
        self, event_id: str, attempt: dict[str, Any], delivered: bool,
        next_attempt_at: float | None, owner: str | None = None,
    ) -> dict[str, Any] | None:
        doc = await self._edit_ntf(event_id, lambda d: bool(settle_notification(
            d, dict(attempt), bool(delivered), next_attempt_at, owner)))
        if doc is not None and doc["state"] != "pending" and doc.get("payment_id"):
            with _errors():
                await self._eval("ntf_wake_next", [NTF_DUE_KEY, notification_payment_key(
                    str(doc["payment_id"]))], [repr(time.time())])
        return doc

    async def _edit_ntf(self, event_id: str, change: Callable[[dict[str, Any]], bool]
                        ) -> dict[str, Any] | None:
        """WATCH one event, let ``change`` edit it (True: write it back) and write it with
        its lease, due-zset and listing-zset consequences in one MULTI; retried on a
        concurrent change. The stored event, or None if there is none."""
        key = notification_key(event_id)
        with _errors():
            async with self._r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.hmget(key, ["doc", "lease_owner", "lease_until"])
                        if raw[0] is None:
                            await pipe.unwatch()
                            return None
                        doc = self._ntf_doc(*raw)
                        old_state = doc.get("state")
                        score = await self._listing_score(pipe, doc)
                        if not change(doc):
                            await pipe.unwatch()
                            return doc
                        pipe.multi()
                        self._move_state(pipe, doc, old_state, score)
                        pipe.hset(key, "doc", self._ntf_stored(doc))
                        if doc["lease_owner"] is None:
                            pipe.hdel(key, "lease_owner", "lease_until")
                        if doc["state"] != "pending":
                            pipe.zrem(NTF_DUE_KEY, event_id)
                        elif doc["lease_owner"] is None:
                            pipe.zadd(NTF_DUE_KEY, {event_id: float(doc["next_attempt_at"])})
                        await pipe.execute()
                        return doc
                    except WatchError:
                        continue

    async def search_notifications(self, query: EventSearch
                                   ) -> tuple[list[dict[str, Any]], bool]:
        # Walk the narrowest listing zset; the other filter (type with a state) is checked
        # on each event.
        if query.state is not None:
            zkey = notification_merchant_key(query.merchant_id, "state", query.state)
        elif query.type is not None:
            zkey = notification_merchant_key(query.merchant_id, "type", query.type)
        else:
            zkey = notification_merchant_key(query.merchant_id)
        out: list[dict[str, Any]] = []
        with _errors():
            top = "+inf"
            if query.starting_after is not None:
                score = await self._r.zscore(notification_merchant_key(query.merchant_id),
                                            query.starting_after)
                if score is None:
                    return [], False
                top = f"({score}"
            batch = max(50, query.limit + 1)
            while True:
                page: list[Any] = list(await self._r.zrevrangebyscore(
                    zkey, top, "-inf", start=0, num=batch, withscores=True))
                if not page:
                    return out, False
                async with self._r.pipeline(transaction=False) as pipe:
                    for member, _ in page:
                        pipe.hmget(notification_key(str(member)),
                                   ["doc", "lease_owner", "lease_until"])
                    raws = await pipe.execute()
                for (_member, member_score), raw in zip(page, raws, strict=True):
                    top = f"({member_score}"
                    if raw[0] is None:
                        continue
                    doc = self._ntf_doc(*raw)
                    if ((query.type is None or doc.get("type") == query.type)
                            and (query.state is None or doc.get("state") == query.state)):
                        if len(out) == query.limit:
                            return out, True
                        out.append(doc)
                if len(page) < batch:
                    return out, False

    @staticmethod
    async def _listing_score(pipe: Any, doc: dict[str, Any]) -> float | None:
        """The event's score in its merchant's listing zsets (read while WATCHing)."""
        merchant = doc.get("merchant_id")
        if not isinstance(merchant, str):
            return None
        score = await pipe.zscore(notification_merchant_key(merchant), str(doc["id"]))
        return None if score is None else float(score)

    @staticmethod
    def _move_state(pipe: Any, doc: dict[str, Any], old: Any, score: float | None) -> None:
        """Queue (inside MULTI) the move of an event between its merchant's state zsets."""
        if score is None or old == doc.get("state"):
            return
        merchant = str(doc["merchant_id"])
        pipe.zrem(notification_merchant_key(merchant, "state", str(old)), str(doc["id"]))
        pipe.zadd(notification_merchant_key(merchant, "state", str(doc["state"])),
                  {str(doc["id"]): score})

    async def requeue_notification(self, event_id: str, now: float) -> dict[str, Any] | None:
        return await self._edit_ntf(event_id, lambda doc: requeue(doc, float(now)))

    # ledger ----------------------------------------------------------------------
    async def append_ledger(self, entries: Sequence[dict[str, Any]]) -> int:
        keys: list[str] = []
        args: list[str] = []
        for entry in entries:
            entry_keys, entry_args = _ledger_parts(entry)
            keys += entry_keys
            args += entry_args
        if not keys:
            return 0
        with _errors():
            return int(await self._eval("ledger_append", keys, args))

    async def ledger_entries_between(self, provider: str, start: float, end: float
                                     ) -> list[dict[str, Any]]:
        with _errors():
            ids = await self._r.zrangebyscore(f"gw:ledger:by:{provider}", float(start),
                                              f"({float(end)}")
            if not ids:
                return []
            raws = await self._r.mget([ledger_entry_key(str(i)) for i in ids])
        return [json.loads(r) for r in raws if r is not None]

    async def save_settlement_lines(self, provider: str, lines: Sequence[dict[str, Any]]
                                    ) -> int:
        if not lines:
            return 0
        with _errors():
            async with self._r.pipeline(transaction=True) as pipe:
                for line in lines:
                    pipe.hsetnx(settlement_key(provider, str(line["settled_on"])),
                                str(line["line_id"]), dumps(line))
                results = await pipe.execute()
        return sum(1 for r in results if r)

    async def list_settlement_lines(self, provider: str, settled_on: str
                                    ) -> list[dict[str, Any]]:
        with _errors():
            raw = await self._r.hgetall(settlement_key(provider, settled_on))
        return [json.loads(v) for _, v in sorted(raw.items())]

    async def list_ledger(self, payment_id: str) -> list[dict[str, Any]]:
        with _errors():
            ids = await self._r.lrange(ledger_key(payment_id), 0, -1)
            if not ids:
                return []
            raws = await self._r.mget([ledger_entry_key(str(i)) for i in ids])
        return [json.loads(r) for r in raws if r is not None]

    async def ledger_balances(self, merchant_id: str, currency: str) -> dict[str, int]:
        with _errors():
            raw = await self._r.hgetall(ledger_balance_key(merchant_id, currency))
        return {str(k): int(v) for k, v in sorted(raw.items())}

    async def get_notification(self, event_id: str) -> dict[str, Any] | None:
        with _errors():
            raw = await self._r.hmget(notification_key(event_id),
                                      ["doc", "lease_owner", "lease_until"])
        return None if raw[0] is None else self._ntf_doc(*raw)

    async def list_notifications(self, payment_id: str) -> list[dict[str, Any]]:
        with _errors():
            ids = await self._r.lrange(notification_payment_key(payment_id), 0, -1)
            if not ids:
                return []
            async with self._r.pipeline(transaction=False) as pipe:
                for eid in ids:
                    pipe.hmget(notification_key(str(eid)), ["doc", "lease_owner", "lease_until"])
                raws = await pipe.execute()
        return [self._ntf_doc(*r) for r in raws if r[0] is not None]


__all__ = [
    "NTF_DUE_KEY",
    "SEARCH_READY_KEY",
    "RedisStore",
    "doc_key",
    "events_key",
    "idem_key",
    "lease_key",
    "notification_key",
    "notification_payment_key",
    "pref_key",
    "search_index_args",
    "search_key",
    "search_prefix",
    "webhook_event_key",
]
