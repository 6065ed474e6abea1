"""Per-API-key limits kept in Redis, so that every API replica counts alike: a token bucket of requests and a
cap on the jobs a key may have queued or running. Each check is one Lua script, atomic in Redis."""

from __future__ import annotations

import math
from typing import cast

from redis import Redis
from rq.job import Job

from core import audits, keys
from core.settings import Settings

#: KEYS[1]: the bucket; ARGV: rate (tokens per second), burst. Returns "0" when a token was taken, else the
#: seconds until one is there. Redis' own clock: replicas whose clocks differ share one bucket.
_TAKE_TOKEN = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local b = redis.call('HMGET', KEYS[1], 'at', 'tokens')
local tokens = tonumber(b[2]) or burst
local at = tonumber(b[1]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'at', tostring(now), 'tokens', tostring(tokens))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""

#: KEYS[1]: the key's jobs (sorted set, score: when reserved). ARGV: cap, job id, RQ's job-hash prefix, how long
#: a reservation whose job does not exist yet is kept, the set's TTL (never shortened), then how an audit's member
#: begins and the prefix and suffix of its slot key (``core.audits.slot_member``, ``slot_key``: an audit is no RQ
#: job; it counts until it ends or expires). Members whose job has ended or expired, and audits whose slot key is
#: gone, are dropped first. Returns the jobs counted, negative when the cap is reached (nothing reserved then).
_RESERVE_JOB = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local ended = {finished=true, failed=true, stopped=true, canceled=true}
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #entries, 2 do
  local id, since = entries[i], tonumber(entries[i + 1])
  if string.sub(id, 1, #ARGV[6]) == ARGV[6] then
    if redis.call('EXISTS', ARGV[7] .. string.sub(id, #ARGV[6] + 1) .. ARGV[8]) == 0 then
      redis.call('ZREM', KEYS[1], id)
    end
  else
    local status = redis.call('HGET', ARGV[3] .. id, 'status')
    if (status and ended[status]) or (not status and now - since > tonumber(ARGV[4])) then
      redis.call('ZREM', KEYS[1], id)
    end
  end
end
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[1]) then return -n end
redis.call('ZADD', KEYS[1], now, ARGV[2])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5])) end
return n + 1
"""

#: A reservation is made just before its job is enqueued; one whose job never appears is dropped after this.
RESERVATION_GRACE_S = 60


def take_token(conn: Redis, settings: Settings, owner: str) -> float:
    """0 if ``owner`` may make a request now (a token is taken), else the seconds until it may."""
    rate = settings.rate_limit_per_min / 60.0
    wait = conn.eval(_TAKE_TOKEN, 1, keys.rate_key(owner), repr(rate), str(settings.rate_limit_burst))
    return float(cast(bytes, wait))


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


def reserve_job(conn: Redis, settings: Settings, owner: str, job_id: str, *, ttl_s: int | None = None) -> int:
    """Count ``job_id`` (a job's id, or an audit's ``core.audits.slot_member``) among ``owner``'s jobs; a negative
    count (its jobs, none reserved) when the cap is reached. ``ttl_s``: how long the count may have to last (an
    audit's TTL); by default a job's longest life."""
    ttl = settings.job_timeout_s * (settings.job_retries + 1) + settings.result_ttl_s
    n = conn.eval(
        _RESERVE_JOB, 1, keys.owner_jobs_key(owner), str(settings.max_jobs_per_key), job_id,
        Job.redis_job_namespace_prefix, str(RESERVATION_GRACE_S), str(max(ttl, ttl_s or 0)), audits.SLOT_MEMBER,
        audits.SLOT_PREFIX, audits.SLOT_SUFFIX,
    )  # fmt: skip
    return int(cast(int, n))


def release_job(conn: Redis, owner: str, job_id: str) -> None:
    """Drop a reservation whose job was not enqueued after all (the queue was full)."""
    conn.zrem(keys.owner_jobs_key(owner), job_id)
