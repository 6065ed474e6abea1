"""Which worker runs a job: the pop that leaves a recoverable copy, the lease it takes, and the reaper.

Every dequeue (one queue or several) moves a job id from its queue into that queue's RQ intermediate list and takes
a *lease* on the job (``dfg:lease:<id>``, a random token with a TTL) in the same Lua script, so there is no moment
at which a job is in no list: a worker SIGKILLed between the pop and the job's start leaves the id in the
intermediate list with a lease that expires, and ``reap`` puts it back at the front of its queue. The worker
renews the lease with its heartbeat while the job runs (workers/worker.py), and a pop never starts a job whose
lease another worker holds: a second copy of a running job (RQ's registry cleanup re-queues a job whose heartbeat
was late) goes to the back of the queue and is dropped once the job has ended. The guarantees and why this design:
docs/OPERATIONS.md, "What the queue guarantees".

The pop also serves API keys fairly: among the first ``FAIR_WINDOW`` ids of the queue it takes the job of the key
served longest ago (each key's last turn is a counter in ``keys.served_key``), the queue's order among a key's own
jobs and between keys served equally long ago. The owner of each job is written by the API when it queues the job
(``keys.job_owner_key``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from redis import Redis
from rq.job import Job

from core import keys

#: How many ids at the head of a queue the fair pop looks at: a key with a job further back waits until the head
#: has moved that far, so a window of this size bounds the work per pop, not fairness among the keys within it.
FAIR_WINDOW = 64
#: The lease a pop takes (ms): it covers the moment from the pop to the job's start, when the worker renews it for
#: the run (``GuardWorker.lease_ms``). A worker killed in between leaves the job to ``reap`` once it expires.
POP_LEASE_MS = 15_000

_POP = """
local ids = redis.call('lrange', KEYS[1], 0, tonumber(ARGV[3]) - 1)
if #ids == 0 then return false end
local best, best_turn, best_owner = nil, nil, nil
local turns = {}
for _, id in ipairs(ids) do
  local owner = redis.call('get', ARGV[5] .. id) or ''
  local turn = turns[owner]
  if turn == nil then
    turn = tonumber(redis.call('zscore', KEYS[3], owner) or '0')
    turns[owner] = turn
  end
  if best == nil or turn < best_turn then best, best_turn, best_owner = id, turn, owner end
end
redis.call('lrem', KEYS[1], 1, best)
local status = redis.call('hget', ARGV[6] .. best, 'status')
if status ~= 'queued' then return {'ended', best} end
if not redis.call('set', ARGV[4] .. best, ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('rpush', KEYS[1], best)
  return {'leased', best}
end
redis.call('rpush', KEYS[2], best)
redis.call('zadd', KEYS[3], redis.call('incr', KEYS[4]), best_owner)
return {'popped', best}
"""

_RENEW = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
if holder == false and ARGV[3] == '1' then redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

_PUT_BACK = """
redis.call('lrem', KEYS[1], -1, ARGV[1])
redis.call('rpush', KEYS[2], ARGV[1])
if redis.call('get', KEYS[3]) == ARGV[2] then redis.call('del', KEYS[3]) end
return 1
"""

_DROP = """
redis.call('lrem', KEYS[1], -1, ARGV[1])
if redis.call('get', KEYS[2]) == ARGV[2] then redis.call('del', KEYS[2]) end
return 1
"""

_REAP = """
local back = {}
for _, id in ipairs(redis.call('lrange', KEYS[1], 0, -1)) do
  if redis.call('exists', ARGV[1] .. id) == 0 then
    redis.call('lrem', KEYS[1], 0, id)
    if redis.call('hget', ARGV[2] .. id, 'status') == 'queued' and not redis.call('lpos', KEYS[2], id) then
      redis.call('lpush', KEYS[2], id)
      table.insert(back, id)
    end
  end
end
return back
"""


@dataclass(frozen=True)
class Popped:
    """What a pop found at the head of a queue: ``popped`` (leased to ``token``: run it), ``leased`` (another
    worker holds it: this copy went to the back of the queue), or ``ended`` (a stale copy of a job that has ended,
    started or vanished: dropped)."""

    outcome: str
    job_id: str
    token: str


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def pop(conn: Redis, queue_key: str, intermediate_key: str, queue_name: str) -> Popped | None:
    """Move the fairest job id at the head of ``queue_key`` to ``intermediate_key`` under a new lease; None when the
    queue is empty."""
    token = new_token()
    reply = conn.eval(
        _POP, 4, queue_key, intermediate_key, keys.served_key(queue_name), keys.served_seq_key(queue_name),
        token, POP_LEASE_MS, FAIR_WINDOW, keys.lease_key(""), keys.job_owner_key(""), Job.redis_job_namespace_prefix,
    )  # fmt: skip
    if not reply:
        return None
    outcome, job_id = (_text(v) for v in reply)
    return Popped(outcome, job_id, token)


def renew(conn: Redis, job_id: str, token: str, ttl_ms: int, *, take_if_free: bool = True) -> bool:
    """Extend ``token``'s lease on the job; with ``take_if_free``, take it again if it expired and nobody else
    took it. False when another worker holds it."""
    return bool(conn.eval(_RENEW, 1, keys.lease_key(job_id), token, ttl_ms, "1" if take_if_free else "0"))


def release(conn: Redis, job_id: str, token: str) -> None:
    conn.eval(_RELEASE, 1, keys.lease_key(job_id), token)


def put_back(conn: Redis, queue_key: str, intermediate_key: str, job_id: str, token: str) -> None:
    """Return a popped job, not started, to the back of its queue and give up its lease, in one step."""
    conn.eval(_PUT_BACK, 3, intermediate_key, queue_key, keys.lease_key(job_id), job_id, token)


def drop(conn: Redis, intermediate_key: str, job_id: str, token: str) -> None:
    """Forget a popped copy that must not run (it was canceled meanwhile, or another worker holds it)."""
    conn.eval(_DROP, 2, intermediate_key, keys.lease_key(job_id), job_id, token)


def reap(conn: Redis, queue_key: str, intermediate_key: str) -> list[str]:
    """Put back at the front of ``queue_key`` every popped job whose lease has expired before it started (its
    worker died between the pop and the start); forget ids whose job ended or vanished. Returns the ids put back."""
    reply = conn.eval(_REAP, 2, intermediate_key, queue_key, keys.lease_key(""), Job.redis_job_namespace_prefix)
    return [_text(v) for v in reply or []]


def new_token() -> str:
    return secrets.token_hex(8)
