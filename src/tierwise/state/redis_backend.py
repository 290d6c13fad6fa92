"""Budgets, rate limits, session pins and model cooldowns shared by every gateway replica, in Redis.

The semantics are :class:`~tierwise.state.memory_backend.MemoryStateBackend`'s, made atomic across processes by
two Lua scripts (loaded once, run with ``EVALSHA``; a ``NOSCRIPT`` after a Redis restart reloads them):

- **admit** is one round trip. The script reads Redis ``TIME`` (periods are UTC days and months on Redis's clock,
  so skewed replica clocks still share one day), releases up to :data:`PURGE_PER_CALL` expired reservations,
  checks the rate limits (a sliding window over this minute and the last) and the caps (refuse when settled +
  reserved spend of a period has reached the cap), and then either refuses — consuming and reserving nothing — or
  counts the request against the rate limits and reserves its estimate against every cap but model caps (those are
  only charged at settle and never block). It returns every cap's consumption (as it stood before this
  reservation; this month's past days' spend for the projection), the session's pin and the cooling models.
- **settle** never blocks the request: :meth:`RedisStateBackend.settle` queues the settlement and a background task
  sends what has queued up in one ``EVALSHA`` (up to :data:`BATCH_MAX` per call; under load, the settlements that
  arrive while one batch is in flight go in the next). Each replaces the request's reservation by its real cost,
  corrects the tokens-per-minute estimate, and stores the pin (``SET … PX``) and the cooldowns the request started.
  A settlement is idempotent per request id: the reservation record is deleted by the settlement that charges it,
  so a batch re-sent after a lost reply charges nothing twice.

Money is integer nano-dollars (``INCRBY``), never a float in Redis. Every key is under one hash tag —
``{<prefix>}:…`` — so both scripts touch a single slot and run unchanged on Redis Cluster (all of tierwise's state
then lives on one shard: it is small, and atomicity across caps needs it there). Keys (``P`` = ``{prefix}``):
``P:sp:<scope>:<day|month>`` settled spend, ``P:rv:<scope>:<day|month>`` reserved, ``P:res`` (sorted set of open
reservations by expiry) and ``P:r:<request id>`` (one reservation), ``P:rq|tk:<scope>:<minute>`` requests and tokens
per minute, ``P:days:<month>`` the days of the month anything was settled, ``P:pin:<session>``,
``P:cool:<model>`` (cooldown end, ms on Redis's clock), ``P:done:<request id>`` (see below).

Beyond the memory backend: a reservation that expires is released (never charged) as there, but its record stays
for :data:`LATE_SETTLE_S` so that a settlement arriving after the expiry — a request slower than the TTL, or one
queued while Redis was away — still charges the request's real cost, once.

Redis unreachable (refused, timed out, loading, read-only, out of memory): with ``on_unavailable="closed"`` (the
default) a request that a budget or rate limit governs is refused with a 503 ``state_unavailable`` in OpenAI's
shape; with ``"open"`` it is admitted without budgets and rate limits, and its ledger record says so
(:attr:`~tierwise.state.backend.Admission.note`). A request that no budget governs is admitted either way (it only
loses the shared pin and cooldowns). The outage is logged once when it starts and once when it ends, naming
Redis by host, port and database, never with the URL's credentials. While Redis is down, admits fail fast for
:data:`PROBE_INTERVAL_S` after each failed try instead of each waiting for the timeout. Settlements wait in a queue
and are sent when Redis is back (an open-mode admission's settlement carries its caps and charges them then, once,
on the periods current at that time); past ``max_pending`` queued settlements the oldest are dropped (counted and
logged): their reservations expire after ``budgets.reservation_ttl_s`` and their spend is not charged.

A Redis restart without persistence loses every counter (budgets start the day from zero): run Redis with AOF
(``appendonly yes``) where budgets must survive one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import orjson
from redis import exceptions as rx

from tierwise.errors import APIError
from tierwise.state.backend import Admission, Cap, RateLimit, Settlement, Usage
from tierwise.state.memory_backend import day_of, month_of, seconds_to_next_day, seconds_to_next_month
from tierwise.state.resp import RespConnection

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("tierwise.state")

NANO = 1_000_000_000  # USD -> integer nano-dollars
PURGE_PER_CALL = 256  # expired reservations an admit releases at most (the rest at the next admits)
BATCH_MAX = 256  # settlements per EVALSHA
LATE_SETTLE_S = 86_400  # an expired reservation's record waits this long for a late settlement
PROBE_INTERVAL_S = 0.5  # while Redis is down: admits fail fast for this long after each failed try
_KEEP_DAY_MS = 40 * 86_400_000  # spend and reservations of a day are kept 40 days (the memory backend's horizon)
_KEEP_MONTH_MS = 400 * 86_400_000

# Shared Lua: the UTC date of a unix time (Howard Hinnant's days-to-civil, exact integer arithmetic on doubles),
# releasing a reservation, charging scopes.
_LIB = r"""
local base = ARGV[1]
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local now_ms = math.floor(now * 1000)
local y, mo, d = civil(math.floor(now / 86400))
local month = string.format('%04d-%02d', y, mo)
local day = string.format('%s-%02d', month, d)
local minute = math.floor(now / 60)
local KEEP_DAY, KEEP_MONTH = tonumber(ARGV[3]), tonumber(ARGV[4])
-- INCRBY with the amount written as an integer (Lua would send 1e+15 for a big number); a key is given its TTL
-- when the increment created it (the result is the amount), so there is no PEXPIRE call per increment
local function add(key, amount, keep)
  local a = string.format('%d', amount)
  if redis.call('INCRBY', key, a) == amount then redis.call('PEXPIRE', key, keep) end
end
local function release(r)
  local a = tonumber(r.a)
  for _, s in ipairs(r.s) do
    add(base .. ':rv:' .. s .. ':' .. r.d, -a, KEEP_DAY)
    add(base .. ':rv:' .. s .. ':' .. r.m, -a, KEEP_MONTH)
  end
end
local function charge(scopes, dd, mm, amount)
  for _, s in ipairs(scopes) do
    add(base .. ':sp:' .. s .. ':' .. dd, amount, KEEP_DAY)
    add(base .. ':sp:' .. s .. ':' .. mm, amount, KEEP_MONTH)
  end
end
"""

# KEYS[1] = P:res. ARGV: base, now|'', keep day, keep month, and the request as one JSON object (one argument
# instead of dozens: packing arguments is most of redis-py's cost per call): id, a (reserve, nano), t (tokens),
# ttl and rec (ms), s (session|''), p (purge limit), c: caps [scope, daily threshold|-1, monthly threshold|-1,
# is model 1/0], l: limits [scope, rpm|-1, tpm|-1], m: models.
_ADMIT = _LIB + r"""
local res = KEYS[1]
local q = cjson.decode(ARGV[5])
local rid, amount, tokens, ttl_ms, record_ms, session = q.id, q.a, q.t, q.ttl, q.rec, q.s
-- release expired reservations (bounded); their records stay for a late settlement
local expired = redis.call('ZRANGEBYSCORE', res, '-inf', now_ms, 'LIMIT', 0, q.p)
for _, id in ipairs(expired) do
  redis.call('ZREM', res, id)
  local rk = base .. ':r:' .. id
  local raw = redis.call('GET', rk)
  if raw then
    local r = cjson.decode(raw)
    if r.x == nil then
      release(r)
      r.x = 1
      redis.call('SET', rk, cjson.encode(r), 'KEEPTTL')
    end
  end
end
-- consumption of every cap, before this request, in one MGET: 4 keys per cap, then its past days of this month
local ncap = #q.c
local past = {}
if ncap > 0 then
  for _, dd in ipairs(redis.call('SMEMBERS', base .. ':days:' .. month)) do
    if dd < day then past[#past + 1] = dd end
  end
  table.sort(past)
end
local caps, usage, keys = {}, {}, {}
for i, c in ipairs(q.c) do
  local sp, rv = base .. ':sp:' .. c[1] .. ':', base .. ':rv:' .. c[1] .. ':'
  caps[i] = {c[1], c[2], c[3], c[4] == 1}
  keys[#keys + 1] = sp .. day
  keys[#keys + 1] = rv .. day
  keys[#keys + 1] = sp .. month
  keys[#keys + 1] = rv .. month
  for _, dd in ipairs(past) do keys[#keys + 1] = sp .. dd end
end
if ncap > 0 then
  local v = redis.call('MGET', unpack(keys))
  local at = 1
  for i = 1, ncap do
    local u = {tonumber(v[at] or '0'), tonumber(v[at + 1] or '0'), tonumber(v[at + 2] or '0'),
               tonumber(v[at + 3] or '0'), {}}
    for j = 1, #past do u[5][j] = tonumber(v[at + 3 + j] or '0') end
    at = at + 4 + #past
    usage[i] = u
  end
end
local limits = q.l
local status, which, unit = 'ok', 0, ''
local again = redis.call('EXISTS', base .. ':r:' .. rid) == 1  -- a retried admit whose reply was lost
if not again then
  -- rate limits: this minute plus the part of the last one the sliding window still covers
  local into = now / 60 - minute
  local m0, m1 = string.format('%d', minute - 1), string.format('%d', minute)
  if #limits > 0 then
    local rk = {}
    for _, lim in ipairs(limits) do
      for _, kind in ipairs({'rq', 'tk'}) do
        rk[#rk + 1] = base .. ':' .. kind .. ':' .. lim[1] .. ':' .. m0
        rk[#rk + 1] = base .. ':' .. kind .. ':' .. lim[1] .. ':' .. m1
      end
    end
    local v = redis.call('MGET', unpack(rk))
    for i, lim in ipairs(limits) do
      for j, kind in ipairs({{lim[2], 1, 'rpm'}, {lim[3], tokens, 'tpm'}}) do
        local at = (i - 1) * 4 + (j - 1) * 2 + 1
        local used = tonumber(v[at] or '0') * (1 - into) + tonumber(v[at + 1] or '0')
        if status == 'ok' and kind[1] >= 0 and used + kind[2] > kind[1] then status, which, unit = 'rate', i, kind[3] end
      end
    end
  end
  -- caps: refuse when settled + reserved has reached the blocking level (model caps never block)
  if status == 'ok' then
    for i, c in ipairs(caps) do
      if status == 'ok' and not c[4] then
        local u = usage[i]
        if c[2] >= 0 and u[1] + u[2] >= c[2] then status, which, unit = 'cap', i, 'daily'
        elseif c[3] >= 0 and u[3] + u[4] >= c[3] then status, which, unit = 'cap', i, 'monthly' end
      end
    end
  end
  if status == 'ok' and (ncap > 0 or #limits > 0) then
    local scopes, mscopes, rscopes = {}, {}, {}
    for _, c in ipairs(caps) do
      if c[4] then mscopes[#mscopes + 1] = c[1] else
        scopes[#scopes + 1] = c[1]
        add(base .. ':rv:' .. c[1] .. ':' .. day, amount, KEEP_DAY)
        add(base .. ':rv:' .. c[1] .. ':' .. month, amount, KEEP_MONTH)
      end
    end
    for _, lim in ipairs(limits) do
      rscopes[#rscopes + 1] = lim[1]
      local m = string.format('%d', minute)
      add(base .. ':rq:' .. lim[1] .. ':' .. m, 1, 150000)
      add(base .. ':tk:' .. lim[1] .. ':' .. m, tokens, 150000)
    end
    -- the amount as a string: cjson writes numbers with 14 significant digits
    local r = {a = string.format('%d', amount), s = scopes, ms = mscopes, rs = rscopes, t = tokens, d = day, m = month, mi = minute}
    redis.call('SET', base .. ':r:' .. rid, cjson.encode(r), 'PX', ttl_ms + record_ms)
    redis.call('ZADD', res, now_ms + ttl_ms, rid)
  end
end
-- shared routing state: the session's pin, the models in cooldown
local pin, cooling = '', {}
if session ~= '' or #q.m > 0 then
  local rk = {base .. ':pin:' .. session}
  for _, model in ipairs(q.m) do rk[#rk + 1] = base .. ':cool:' .. model end
  local v = redis.call('MGET', unpack(rk))
  if session ~= '' then pin = v[1] or '' end
  for i, model in ipairs(q.m) do
    local until_ms = v[i + 1]
    if until_ms and tonumber(until_ms) > now_ms then
      cooling[#cooling + 1] = model
      cooling[#cooling + 1] = until_ms
    end
  end
end
local out = {}
for i, u in ipairs(usage) do out[i] = {u[1], u[2], u[3], u[4], u[5]} end
return {string.format('%.6f', now), status, which, unit, out, pin, cooling}
"""

# KEYS[1] = P:res. ARGV: base, now|'', keep day, keep month, pin ttl ms, late-settle ms, JSON array of settlements
# [request id, cost nano, tokens, {model: nano}, session|null, pin|null, {model: cooldown ms}, unreserved|null]
# where unreserved = [scopes, model scopes] (admitted while Redis was away: charge these, once).
_SETTLE = _LIB + r"""
local res = KEYS[1]
local pin_ms, late_ms = tonumber(ARGV[5]), tonumber(ARGV[6])
local function models_charge(mscopes, models, dd, mm)
  for _, s in ipairs(mscopes) do
    local c = models[string.sub(s, 7)]
    if c then charge({s}, dd, mm, c) else charge({s}, dd, mm, 0) end
  end
end
local function seen(mm, dd)  -- the days of a month anything was settled on (the projection's past days)
  if redis.call('SADD', base .. ':days:' .. mm, dd) == 1 then redis.call('PEXPIRE', base .. ':days:' .. mm, KEEP_MONTH) end
end
local charged = 0
for _, st in ipairs(cjson.decode(ARGV[7])) do
  local id, cost, tokens, models = st[1], st[2], st[3], st[4]
  local rk = base .. ':r:' .. id
  local raw = redis.call('GET', rk)
  if raw then
    local r = cjson.decode(raw)
    if r.x == nil then
      release(r)
      redis.call('ZREM', res, id)
    end
    charge(r.s, r.d, r.m, cost)
    models_charge(r.ms, models, r.d, r.m)
    for _, s in ipairs(r.rs) do  -- tokens per minute: the admission's estimate, corrected to what was used
      add(base .. ':tk:' .. s .. ':' .. string.format('%d', r.mi), tokens - r.t, 150000)
    end
    seen(r.m, r.d)
    redis.call('DEL', rk)
    charged = charged + 1
  elseif st[8] ~= cjson.null then
    if redis.call('SET', base .. ':done:' .. id, '1', 'NX', 'PX', late_ms) then
      charge(st[8][1], day, month, cost)
      models_charge(st[8][2], models, day, month)
      seen(month, day)
      charged = charged + 1
    end
  end
  if st[5] ~= cjson.null and st[6] ~= cjson.null then
    redis.call('SET', base .. ':pin:' .. st[5], st[6], 'PX', pin_ms)
  end
  for model, ms in pairs(st[7]) do
    local k = base .. ':cool:' .. model
    local until_ms = now_ms + ms
    local cur = tonumber(redis.call('GET', k) or '0')
    if until_ms > cur then redis.call('SET', k, string.format('%d', until_ms), 'PX', math.max(1, math.floor(ms))) end
  end
end
return charged
"""


def redacted(url: str) -> str:
    """``redis://host:port/db`` of a Redis URL: never its user name or password (for logs and errors)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "redis (unparseable url)"
    db = parts.path.strip("/") or "0"
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    return f"{parts.scheme or 'redis'}://{host}:{port}/{db}"


def _unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot serve us now (as opposed to a bug in a script)."""
    if isinstance(exc, rx.ConnectionError | rx.TimeoutError | rx.ReadOnlyError | rx.OutOfMemoryError
                  | rx.ClusterDownError | rx.TryAgainError | OSError | asyncio.TimeoutError):
        return True
    return isinstance(exc, rx.ResponseError) and str(exc).startswith(("OOM", "LOADING", "READONLY", "MASTERDOWN"))


def _nano(usd: float) -> int:
    return round(usd * NANO)


class RedisStateBackend:
    """See the module docstring. ``url`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL; ``timeout_s`` bounds
    connecting and each call; ``clock`` (tests only) replaces Redis ``TIME``; ``client`` an existing
    ``redis.asyncio.Redis`` (made with ``decode_responses=True``).

    ``round_trips`` counts the calls made to Redis by kind (``admit``, ``settle``, ``script_load``);
    ``admitted`` and ``settled`` count requests, so round trips per request = sum / admitted."""

    shares_routing_state = True

    def __init__(self, url: str, *, prefix: str = "tw", on_unavailable: Literal["closed", "open"] = "closed",
                 pin_ttl_s: float = 3600.0, timeout_s: float = 0.5, max_pending: int = 100_000,
                 batch_max: int = BATCH_MAX, clock: Callable[[], float] | None = None,
                 client: Redis | None = None) -> None:
        if on_unavailable not in ("closed", "open"):
            raise ValueError("on_unavailable must be 'closed' or 'open'")
        if "{" in prefix or "}" in prefix:
            raise ValueError("the prefix must not contain '{' or '}' (it becomes the keys' hash tag)")
        self.url = url
        self.where = redacted(url)
        self.prefix = prefix
        self.base = "{" + prefix + "}"
        self.on_unavailable = on_unavailable
        self.pin_ttl_ms = max(1, int(pin_ttl_s * 1000))
        self.max_pending = max_pending
        self.batch_max = batch_max
        self._clock = clock
        self._client = client if client is not None else self._connect(url, timeout_s)
        pool = self._client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        call_timeout = kwargs.get("socket_timeout") or timeout_s
        self._resp = RespConnection(kwargs, call_timeout) if RespConnection.usable(pool.connection_class, kwargs) \
            else None
        self._res_key = self.base + ":res"
        self._consts = [self.base, "", str(_KEEP_DAY_MS), str(_KEEP_MONTH_MS)]
        self._sha: dict[str, str] = {}
        self.round_trips: collections.Counter[str] = collections.Counter()
        self.admitted = 0
        self.settled = 0  # settlements sent and acknowledged
        self.dropped = 0  # settlements dropped because the queue was full
        self.degraded = 0  # admissions made without Redis (on_unavailable: open)
        self._queue: collections.deque[list[Any]] = collections.deque()
        self._unreserved: collections.OrderedDict[str, list[list[str]]] = collections.OrderedDict()
        self._unrecorded: collections.OrderedDict[str, None] = collections.OrderedDict()  # admitted, no record
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._closed = False

    @staticmethod
    def _connect(url: str, timeout_s: float) -> Redis:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                              retry=Retry(NoBackoff(), 0), decode_responses=True)  # retries are ours (see _call)

    # -- admit -----------------------------------------------------------------------------------------------------

    async def admit(self, request_id: str, caps: Sequence[Cap], limits: Sequence[RateLimit], reserve_usd: float,
                    tokens: int, block_at: dict[str, float], ttl_s: float, session_id: str | None = None,
                    models: Sequence[str] = ()) -> Admission:
        self._start()
        if self._down_since is not None and time.monotonic() < self._retry_at:
            return self._without_redis(request_id, caps, limits, None)
        spec = {"id": request_id, "a": _nano(reserve_usd), "t": int(tokens), "ttl": max(1, int(ttl_s * 1000)),
                "rec": LATE_SETTLE_S * 1000, "s": session_id or "", "p": PURGE_PER_CALL,
                "c": [[c.scope, -1 if c.daily_usd is None else c.daily_usd * block_at.get(c.scope, 1.0) * NANO,
                       -1 if c.monthly_usd is None else c.monthly_usd * block_at.get(c.scope, 1.0) * NANO,
                       1 if c.scope.startswith("model:") else 0] for c in caps],
                "l": [[lim.scope, -1 if lim.rpm is None else lim.rpm, -1 if lim.tpm is None else lim.tpm]
                      for lim in limits],
                "m": list(models)}
        args = [self.base, "" if self._clock is None else repr(self._clock()), *self._consts[2:],
                orjson.dumps(spec)]
        try:
            out = await self._call("admit", _ADMIT, args)
        except Exception as exc:
            if not _unavailable(exc):
                raise
            return self._without_redis(request_id, caps, limits, exc)
        self._back_up()
        self.admitted += 1
        if not caps and not limits:  # nothing reserved: its settle matters only if it changes a pin or a cooldown
            self._unrecorded[request_id] = None
            if len(self._unrecorded) > self.max_pending:
                self._unrecorded.popitem(last=False)
        return self._admission(out, caps, limits, reserve_usd)

    @staticmethod
    def _admission(out: list[Any], caps: Sequence[Cap], limits: Sequence[RateLimit], reserve_usd: float) -> Admission:
        now_s, status, which, unit, usages, pin, cooling = out
        now = float(now_s)
        usage = {}
        for cap, u in zip(caps, usages, strict=True):
            usage[cap.scope] = Usage(u[0] / NANO, u[1] / NANO, u[2] / NANO, u[3] / NANO,
                                     tuple(p / NANO for p in u[4]))
        cool = {cooling[i]: int(cooling[i + 1]) / 1000 for i in range(0, len(cooling), 2)}
        refused: str | None = None
        retry: float | None = None
        if status == "rate":
            lim = limits[which - 1]
            cap_n, what = (lim.rpm, "requests") if unit == "rpm" else (lim.tpm, "tokens")
            into = now / 60 - now // 60  # the part of this minute gone (as the memory backend computes it)
            refused, retry = f"rate limit {lim.scope}: {cap_n} {what} per minute", max(1.0, 60 * (1 - into))
        elif status == "cap":
            c = caps[which - 1]
            if unit == "daily":
                refused, retry = f"budget {c.scope} daily ${c.daily_usd:g}", seconds_to_next_day(now)
            else:
                refused, retry = f"budget {c.scope} monthly ${c.monthly_usd:g}", seconds_to_next_month(now)
        return Admission(now, usage, 0.0 if refused else reserve_usd, refused, retry, pin or None, cool)

    def _without_redis(self, request_id: str, caps: Sequence[Cap], limits: Sequence[RateLimit],
                       exc: BaseException | None) -> Admission:
        """Redis is away: refuse (closed) or admit without budgets and rate limits (open, or nothing to govern)."""
        if exc is not None:
            self._went_down(exc)
        if (caps or limits) and self.on_unavailable == "closed":
            raise APIError(503, "tierwise cannot check budgets and rate limits right now (its shared state store, "
                           "Redis, is unreachable), so it refuses requests they govern (state.on_unavailable: "
                           "closed); retry shortly", type="server_error", code="state_unavailable",
                           headers={"Retry-After": "1"})
        self.degraded += 1
        note = None
        if caps or limits:
            note = ("admitted without budgets or rate limits: the shared state store (Redis) was unreachable "
                    "(state.on_unavailable: open); its cost is charged to the budgets when Redis is back")
            self._unreserved[request_id] = [[c.scope for c in caps if not c.scope.startswith("model:")],
                                            [c.scope for c in caps if c.scope.startswith("model:")]]
            while len(self._unreserved) > self.max_pending:
                self._unreserved.popitem(last=False)
        else:
            self._unrecorded[request_id] = None
            if len(self._unrecorded) > self.max_pending:
                self._unrecorded.popitem(last=False)
        return Admission(time.time(), {}, 0.0, note=note)

    # -- settle ----------------------------------------------------------------------------------------------------

    def settle(self, s: Settlement) -> None:
        if self._unrecorded.pop(s.request_id, 0) is None and s.pin is None and not s.cooldowns:
            return  # nothing to charge or share: no round trip
        item: list[Any] = [s.request_id, _nano(s.cost_usd), int(s.tokens),
                           {m: _nano(c) for m, c in s.models.items()},
                           s.session_id if s.pin is not None else None, s.pin,
                           {m: int(sec * 1000) for m, sec in s.cooldowns.items()},
                           self._unreserved.pop(s.request_id, None)]
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error("state backend %s: %d settlement(s) dropped (more than %d waiting for Redis): their "
                          "reservations expire and their spend is not charged to budgets", self.where,
                          self.dropped, self.max_pending)
        self._queue.append(item)
        self._start()
        self._poke()

    def _poke(self) -> None:
        if self._wake is None or self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _start(self) -> None:
        """Start the settlement sender on the running loop (the first admit or settle does)."""
        if self._worker is not None or self._closed:
            return
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._wake = asyncio.Event()
        self._worker = self._loop.create_task(self._send_settlements(), name="tierwise-redis-settle")

    async def _send_settlements(self) -> None:
        assert self._wake is not None
        backoff = 0.05
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._down_since is not None and time.monotonic() < self._retry_at:
                await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
            batch = [self._queue.popleft() for _ in range(min(self.batch_max, len(self._queue)))]
            self._in_flight = len(batch)
            args = [*self._consts, self.pin_ttl_ms, LATE_SETTLE_S * 1000, orjson.dumps(batch).decode()]
            if self._clock is not None:
                args[1] = repr(self._clock())
            try:
                await self._call("settle", _SETTLE, args)
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(batch))
                raise
            except Exception as exc:
                if _unavailable(exc):
                    self._queue.extendleft(reversed(batch))  # sent again when Redis answers: idempotent
                    self._went_down(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                else:  # a bug: never loop on it
                    log.error("state backend %s: %d settlement(s) failed: %s", self.where, len(batch), exc)
            else:
                backoff = 0.05
                self.settled += len(batch)
                self._back_up()
            finally:
                self._in_flight = 0

    async def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued settlement has been sent (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self._in_flight:
            if time.monotonic() >= deadline or self._worker is None or self._worker.done():
                return False
            await asyncio.sleep(0.002)
        return True

    async def aclose(self, timeout_s: float = 2.0) -> None:
        """Send what is queued (for up to ``timeout_s``), then close the connections."""
        if self._closed:
            return
        if self._queue and not await self.flush(timeout_s):
            log.warning("state backend %s: %d settlement(s) not sent at shutdown (Redis unreachable): their "
                        "reservations expire and their spend is not charged to budgets", self.where,
                        len(self._queue) + self._in_flight)
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker
        if self._resp is not None:
            await self._resp.aclose()
        await self._client.aclose()

    # -- Redis calls -----------------------------------------------------------------------------------------------

    async def _call(self, kind: str, script: str, args: list[Any]) -> Any:
        """EVALSHA ``script``; loads it first time and after a NOSCRIPT (a restarted Redis); one retry on a broken
        connection (a pooled one a Redis restart left dead) — safe, both scripts are idempotent per request id."""
        for attempt in (0, 1):
            sha = self._sha.get(kind)
            try:
                if sha is None:
                    self.round_trips["script_load"] += 1
                    sha = self._sha[kind] = await self._script_load(script)
                self.round_trips[kind] += 1
                return await self._evalsha(sha, args)
            except rx.NoScriptError:
                self._sha.pop(kind, None)
                if attempt:
                    raise
            except rx.ConnectionError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _script_load(self, script: str) -> str:
        """SCRIPT LOAD on the connection the script will run on (a pooled redis-py connection a Redis restart left
        dead would fail the load that follows a NOSCRIPT)."""
        if self._resp is not None:
            return str(await self._resp.call("SCRIPT", "LOAD", script))
        return str(await self._client.script_load(script))

    async def _evalsha(self, sha: str, args: list[Any]) -> Any:
        """One EVALSHA: on the pipelined connection of :mod:`tierwise.state.resp` where it can stand in for redis-py's
        (plain TCP or unix socket), else on a pooled redis-py connection without the client's per-command machinery.
        A redis-py connection interrupted mid-call — timeout, cancellation — is closed, never reused with a reply
        still unread."""
        if self._resp is not None:
            return await self._resp.call("EVALSHA", sha, 1, self._res_key, *args)
        pool = self._client.connection_pool
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(conn.pack_command("EVALSHA", sha, 1, self._res_key, *args), False)
            return await conn.read_response()
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            await pool.release(conn)

    async def read_usage(self, scopes: Sequence[str], *, past_days: bool = False) -> dict[str, Usage]:
        """Each scope's settled and reserved spend in the current day and month (Redis's clock), reserving nothing:
        for metrics at scrape time and the dashboard (two round trips: TIME, MGET), never on the request path.
        Raises when Redis is unreachable. ``past_days``: also the settled spend of this month's earlier days with
        any spend (the projection's input, as admission reads it; one more round trip, SMEMBERS), else empty."""
        if self._clock is not None:
            now = self._clock()
        else:
            sec, usec = await self._client.time()
            now = int(sec) + int(usec) / 1e6
        day, month = day_of(now), month_of(now)
        periods = (day, month)
        past: list[str] = []
        if past_days and scopes:
            seen = await self._client.smembers(f"{self.base}:days:{month}")
            past = sorted(d for d in (m.decode() if isinstance(m, bytes) else str(m) for m in seen) if d < day)
        keys = [f"{self.base}:{kind}:{s}:{p}" for s in scopes for kind in ("sp", "rv") for p in periods]
        keys += [f"{self.base}:sp:{s}:{d}" for s in scopes for d in past]
        vals = await self._client.mget(keys) if keys else []
        nano = [int(v or 0) / NANO for v in vals]
        at, n = 4 * len(scopes), len(past)
        return {s: Usage(nano[4 * i], nano[4 * i + 2], nano[4 * i + 1], nano[4 * i + 3],
                         tuple(nano[at + n * i: at + n * (i + 1)])) for i, s in enumerate(scopes)}

    async def share_pin(self, session_id: str, model: str) -> bool:
        """Store a session's new pin now (one round trip), for a request that just (re)pinned it: its settlement
        would carry the pin too, but is sent after the answer has left, and a client that sends its next turn to
        another replica at once would find no pin there (measured: a third of the time under load). Never raises:
        with Redis away the pin is simply not shared (False), as any request's would not be."""
        if self._down_since is not None and time.monotonic() < self._retry_at:
            return False
        try:
            self.round_trips["pin"] += 1
            await self._client.set(f"{self.base}:pin:{session_id}", model, px=self.pin_ttl_ms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if _unavailable(exc):
                self._went_down(exc)
            else:
                log.error("state backend %s: sharing a session pin failed: %s", self.where, type(exc).__name__)
            return False
        return True

    async def ping(self) -> None:
        await self._client.ping()  # type: ignore[misc]

    def _went_down(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + PROBE_INTERVAL_S
        if self._down_since is None:
            self._down_since = time.monotonic()
            how = "refusing requests that budgets or rate limits govern" if self.on_unavailable == "closed" else \
                "admitting requests without budgets or rate limits"
            log.error("state backend Redis at %s is unreachable (%s): %s until it is back "
                      "(state.on_unavailable: %s)", self.where, _describe(exc, self.url), how, self.on_unavailable)

    def _back_up(self) -> None:
        if self._down_since is not None:
            log.warning("state backend Redis at %s is reachable again after %.1f s", self.where,
                        time.monotonic() - self._down_since)
            self._down_since = None

    def stats(self) -> dict[str, Any]:
        """Counters for tests, the benchmark and operators."""
        return {"round_trips": dict(self.round_trips), "admitted": self.admitted, "settled": self.settled,
                "pending": len(self._queue), "dropped": self.dropped, "degraded": self.degraded,
                "down": self._down_since is not None}


def _describe(exc: BaseException, url: str) -> str:
    """The error's type and message with the URL's password (if any) cut out."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    try:
        secret = urlsplit(url).password
    except ValueError:
        secret = None
    return text.replace(secret, "***") if secret else text



def connection_problem(url: str, timeout_s: float = 2.0) -> str | None:
    """Why Redis at ``url`` cannot be used, or None (connects and PINGs; for ``check-config`` and ``serve``).
    The message names host, port and database, never the URL's credentials."""
    from redis import Redis
    from redis.exceptions import RedisError

    where = redacted(url)
    try:
        client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except (ValueError, RedisError) as exc:
        return f"state.url is not a usable Redis URL ({_describe(exc, url)})"
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        return f"cannot reach the Redis state backend at {where}: {_describe(exc, url)}"
    finally:
        client.close()
    return None
