"""The Lua scripts of the Redis broker. Each runs atomically inside Redis and touches keys of
one tenant only (one hash tag), so each stays within one Redis Cluster slot (PUBLISH's
rate-limit budget included: its key carries the same tag, ``server.ratelimit.principal_key``).

Key and value formats are described in ``server.broker.redis_keys``. An idempotency record
is ``<seq>|<message id>|<sent_at>|<log entry id>``; the entry id is empty for records
seeded from the store (those messages are stored already).
"""

from __future__ import annotations

# The ``limits`` library's moving window for one unit (its acquire_moving_window.lua), as a
# Lua function for every script that counts a shared rate-limit hit (PUBLISH here,
# ``server.ratelimit_redis``): nil when the hit is counted, else the window's oldest entry,
# from which the refusal's reset time follows (plus the window). ``now`` is the caller's
# unix time as text, stored as given, as the library stores it.
MOVING_WINDOW_HIT = """
local function moving_window_hit(key, now, limit, expiry)
  local oldest = redis.call('LINDEX', key, limit - 1)
  if oldest and tonumber(oldest) >= tonumber(now) - expiry then
    return oldest
  end
  redis.call('LPUSH', key, now)
  redis.call('LTRIM', key, 0, limit - 1)
  redis.call('EXPIRE', key, expiry)
  return nil
end
"""

# KEYS: seq, window, log, epoch, idem (a never-written dummy when there is no client_msg_id),
#       budget (the shared rate limit's window; a never-written dummy when there is none)
# ARGV: per message: fields, idem ttl ('' = none), message id, sent_at,
#       budget: now (unix seconds, '' = no budget), limit, window seconds;
#       then the same for every publish of a channel from this node (packed once):
#       origin node, fan-out channel, window size, window ttl, epoch candidate,
#       max backlog, consumer group
# -> {'noseq'} | {'limited', oldest hit} | {'full'} | {'dup', record, pending 0|1, epoch}
#    | {'ok', seq, entry id, epoch}
# Every redis.call costs the script about a microsecond beyond the command itself (argument
# objects, lookup, bookkeeping): the stream's length alone says whether it may exist (an
# empty one is looked up), and the window is trimmed (and its expiry renewed) once it holds
# an eighth more than its size rather than at every publish, so it keeps between ``window``
# and ``window * 9/8`` messages, and an idle one expires at most its ttl after the last
# trim or its first message (then ``recent`` misses and the store serves it).
# The budget is the ``limits`` library's moving window (MOVING_WINDOW_HIT): the same list, the
# same entries, so its other users see every hit made here. It is consumed before the
# idempotency check, as the separate check before the publish did. Its key carries the
# tenant's hash tag (``server.ratelimit.principal_key``), so it lies in the tenant's slot.
PUBLISH = (
    MOVING_WINDOW_HIT
    + """
local seq = redis.call('GET', KEYS[1])
if not seq then return {'noseq'} end
if ARGV[5] ~= '' then
  local oldest = moving_window_hit(KEYS[6], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]))
  if oldest then return {'limited', oldest} end
end
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  epoch = ARGV[12]
  redis.call('SET', KEYS[4], epoch)
end
if ARGV[2] ~= '' then
  local prior = redis.call('GET', KEYS[5])
  if prior then
    local xid = string.match(prior, '|([^|]*)$')
    local pending = 0
    if xid and xid ~= '' and #redis.call('XRANGE', KEYS[3], xid, xid) > 0 then
      pending = 1
    end
    return {'dup', prior, pending, epoch}
  end
end
local backlog = redis.call('XLEN', KEYS[3])
if backlog >= tonumber(ARGV[13]) then
  return {'full'}
elseif backlog == 0 and redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[3], ARGV[14], '0', 'MKSTREAM')
end
seq = redis.call('INCR', KEYS[1])
local line = seq .. '|' .. ARGV[1]
local xid = redis.call('XADD', KEYS[3], '*', 'o', ARGV[8], 'm', line)
local kept = redis.call('RPUSH', KEYS[2], line)
local window = tonumber(ARGV[10])
if kept == 1 or kept > window + math.floor(window / 8) then
  redis.call('LTRIM', KEYS[2], -window, -1)
  redis.call('EXPIRE', KEYS[2], ARGV[11])
end
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[5], seq .. '|' .. ARGV[3] .. '|' .. ARGV[4] .. '|' .. xid,
             'EX', ARGV[2])
end
redis.call('PUBLISH', ARGV[9], 'm' .. line)
return {'ok', seq, xid, epoch}
"""
)

# KEYS: seq, window. ARGV: since.
# -> {'miss'} when the window does not reach back to since, else {'ok', line, ...}
RECENT = """
local head = redis.call('GET', KEYS[1])
if not head then return {'miss'} end
local since = tonumber(ARGV[1])
if since >= tonumber(head) then return {'ok'} end
local first = redis.call('LINDEX', KEYS[2], 0)
if not first then return {'miss'} end
local oldest = tonumber(string.match(first, '^(%d+)|'))
if oldest > since + 1 then return {'miss'} end
local out = redis.call('LRANGE', KEYS[2], since + 1 - oldest, -1)
table.insert(out, 1, 'ok')
return out
"""

# KEYS: log, epoch. ARGV: entry ids. -> {epoch or '', 1|0 per id (still in the log)}
PENDING = """
local out = {redis.call('GET', KEYS[2]) or ''}
for i = 1, #ARGV do
  if #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i]) > 0 then
    out[i + 1] = 1
  else
    out[i + 1] = 0
  end
end
return out
"""

# KEYS: control log. ARGV: control channel, payload, max length. -> entry id
CONTROL = """
local xid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[2])
redis.call('PUBLISH', ARGV[1], xid .. '|' .. ARGV[2])
return xid
"""
