"""The Lua scripts of the shared pool: each one reads and changes the pool's Redis keys atomically.

Keys (under the prefix `P`, ARGV[1] of every script):
  s:<account>   sorted set of the slots taken: lease id -> expiry (ms, Redis clock)
  cool:<account>  the end of a cool-down (ms), expiring with it; f:<account> failures in a row
  idle          hash account -> when it was last taken or given back (the "idle longest" choice)
  q             sorted set of waiting tickets -> arrival (epoch us); tc: ticket -> "|a|b|" candidates
  alive:<proc>  a gateway process's heartbeat; its tickets count only while it exists
  u:<proc>      "|a|b|": the accounts that process has a token for (may be handed to its tickets)
  g:<proc>      grants not yet delivered to that process (ticket -> account); also PUBLISHed on
                ch:<proc>; bind:<account> the egress proxy an account is bound to
A ticket is "<proc>|<n>"; a granted ticket becomes the lease id. A freed slot goes to the oldest live
ticket that may use it (queue fairness across gateways); scans look at the oldest `SCAN` tickets.
"""

from __future__ import annotations

SCAN = 200

_COMMON = f"""
local P = ARGV[1]
local SCAN = {SCAN}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local alive_cache = {{}}
local function alive(owner)
  local known = alive_cache[owner]
  if known == nil then
    known = redis.call('EXISTS', P .. 'alive:' .. owner) == 1
    alive_cache[owner] = known
  end
  return known
end
local function owner_of(ticket) return string.match(ticket, '^([^|]+)|') end
local function drop_ticket(ticket)
  redis.call('ZREM', P .. 'q', ticket)
  redis.call('HDEL', P .. 'tc', ticket)
end
local function cooling_ms(account) return redis.call('PTTL', P .. 'cool:' .. account) end
local function free_slots(account, concurrency, now)
  local key = P .. 's:' .. account
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  return concurrency - redis.call('ZCARD', key)
end
local function listed(list, account)
  return list and string.find(list, '|' .. account .. '|', 1, true) ~= nil
end
local function eligible(ticket, owner, account)
  return listed(redis.call('HGET', P .. 'tc', ticket), account)
     and listed(redis.call('GET', P .. 'u:' .. owner), account)
end
local function take(account, lease, now, lease_ms)
  redis.call('ZADD', P .. 's:' .. account, now + lease_ms, lease)
  redis.call('HSET', P .. 'idle', account, now)
end
local function extend_cooldown(account, until_ms, now)
  local key = P .. 'cool:' .. account
  local current = tonumber(redis.call('GET', key) or '0')
  if until_ms > current and until_ms > now then
    redis.call('SET', key, until_ms, 'PX', until_ms - now)
    return until_ms
  end
  return current
end
-- Give the free slots of `account` to the oldest live tickets that may use it. Grants to `caller`
-- are returned in `grants` (ticket, account, ...); others are recorded and published to their owner.
local function hand_off(account, concurrency, caller, now, lease_ms, grants)
  if cooling_ms(account) > 0 then return end
  local free = free_slots(account, concurrency, now)
  if free <= 0 then return end
  for _, ticket in ipairs(redis.call('ZRANGE', P .. 'q', 0, SCAN - 1)) do
    local owner = owner_of(ticket)
    if not owner or not alive(owner) then
      drop_ticket(ticket)
    elseif eligible(ticket, owner, account) then
      take(account, ticket, now, lease_ms)
      drop_ticket(ticket)
      if owner == caller then
        table.insert(grants, ticket)
        table.insert(grants, account)
      else
        redis.call('HSET', P .. 'g:' .. owner, ticket, account)
        redis.call('PUBLISH', P .. 'ch:' .. owner, ticket .. ' ' .. account)
      end
      free = free - 1
      if free == 0 then return end
    end
  end
end
"""

# ARGV: P, proc, ticket, score, lease_ms, enqueue (0/1), candidates "|a|b|", n, n x (account, concurrency)
# -> {1, account, soonest} granted | {0, '', soonest} queued | {2, '', soonest} refused (soonest: ms
# until the first cooling candidate is back, -1 if none cools)
ACQUIRE = (
    _COMMON
    + """
local proc, ticket, score, lease_ms = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local enqueue, candidates, n = ARGV[6] == '1', ARGV[7], tonumber(ARGV[8])
local now = now_ms()
local function claimed(account, free)
  local count = 0
  for _, other in ipairs(redis.call('ZRANGE', P .. 'q', 0, SCAN - 1)) do
    local owner = owner_of(other)
    if not owner or not alive(owner) then
      drop_ticket(other)
    elseif eligible(other, owner, account) then
      count = count + 1
      if count >= free then return true end
    end
  end
  return false
end
local best, best_idle, soonest = nil, nil, -1
for i = 0, n - 1 do
  local account, concurrency = ARGV[9 + 2 * i], tonumber(ARGV[10 + 2 * i])
  local left = cooling_ms(account)
  if left > 0 then
    if soonest < 0 or left < soonest then soonest = left end
  else
    local free = free_slots(account, concurrency, now)
    if free > 0 and not claimed(account, free) then
      local idle = tonumber(redis.call('HGET', P .. 'idle', account) or '0')
      if best == nil or idle < best_idle then best, best_idle = account, idle end
    end
  end
end
if best then
  take(best, ticket, now, lease_ms)
  return {1, best, soonest}
end
if enqueue then
  redis.call('ZADD', P .. 'q', score, ticket)
  redis.call('HSET', P .. 'tc', ticket, candidates)
  return {0, '', soonest}
end
return {2, '', soonest}
"""
)

# ARGV: P, proc, lease, account, concurrency, lease_ms, effect (none|ok|cool|backoff), cool_ms,
# base_ms, cap_ms -> {cooldown end ms or -1, {ticket, account, ...} granted to proc}
RELEASE = (
    _COMMON
    + """
local proc, lease, account = ARGV[2], ARGV[3], ARGV[4]
local concurrency, lease_ms, effect = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local cool_ms, base_ms, cap_ms = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local now = now_ms()
redis.call('ZREM', P .. 's:' .. account, lease)
redis.call('HSET', P .. 'idle', account, now)
local until_ms = -1
if effect == 'ok' then
  redis.call('DEL', P .. 'f:' .. account)
elseif effect == 'cool' or effect == 'backoff' then
  local wait = cool_ms
  if effect == 'backoff' then
    local failures = redis.call('INCR', P .. 'f:' .. account)
    redis.call('PEXPIRE', P .. 'f:' .. account, cap_ms * 4)
    wait = math.min(cap_ms, base_ms * 2 ^ math.min(failures - 1, 40))
  end
  until_ms = extend_cooldown(account, math.floor(now + wait), now)
end
local grants = {}
hand_off(account, concurrency, proc, now, lease_ms, grants)
return {until_ms, grants}
"""
)

# ARGV: P, proc, lease_ms, n, n x (account, concurrency) -> {ticket, account, ...} granted to proc
DISPATCH = (
    _COMMON
    + """
local proc, lease_ms, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local grants = {}
if redis.call('ZCARD', P .. 'q') == 0 then return grants end
local now = now_ms()
for i = 0, n - 1 do
  hand_off(ARGV[5 + 2 * i], tonumber(ARGV[6 + 2 * i]), proc, now, lease_ms, grants)
end
return grants
"""
)

# ARGV: P, proc, ticket -> the account the ticket was granted meanwhile (its lease to release), or false
WITHDRAW = (
    _COMMON
    + """
local proc, ticket = ARGV[2], ARGV[3]
drop_ticket(ticket)
local granted = redis.call('HGET', P .. 'g:' .. proc, ticket)
if granted then redis.call('HDEL', P .. 'g:' .. proc, ticket) end
return granted
"""
)

# ARGV: P, proc, alive_ms, lease_ms, usable "|a|", then three counted lists: leases held (account,
# lease), cool-downs known (account, end ms), bindings (account, proxy label); then the accounts to
# report (account, concurrency) -> {1 if the heartbeat key still existed else 0, undelivered grants
# {ticket, account, ...}, per account {slots taken, cool-down end ms or 0}, tickets queued, grants
# made now to proc {ticket, account, ...}}
HEARTBEAT = (
    _COMMON
    + """
local proc, alive_ms, lease_ms, usable = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
local existed = redis.call('SET', P .. 'alive:' .. proc, '1', 'PX', alive_ms, 'GET')
redis.call('SET', P .. 'u:' .. proc, usable, 'PX', alive_ms)
local i = 6
local count = tonumber(ARGV[i]); i = i + 1
for _ = 1, count do
  redis.call('ZADD', P .. 's:' .. ARGV[i], now + lease_ms, ARGV[i + 1]); i = i + 2
end
count = tonumber(ARGV[i]); i = i + 1
for _ = 1, count do
  extend_cooldown(ARGV[i], tonumber(ARGV[i + 1]), now); i = i + 2
end
count = tonumber(ARGV[i]); i = i + 1
for _ = 1, count do
  redis.call('SET', P .. 'bind:' .. ARGV[i], ARGV[i + 1], 'NX'); i = i + 2
end
local pending = redis.call('HGETALL', P .. 'g:' .. proc)
redis.call('DEL', P .. 'g:' .. proc)
count = tonumber(ARGV[i]); i = i + 1
local view, grants = {}, {}
local queued = redis.call('ZCARD', P .. 'q')
for _ = 1, count do
  local account, concurrency = ARGV[i], tonumber(ARGV[i + 1]); i = i + 2
  if queued > 0 then hand_off(account, concurrency, proc, now, lease_ms, grants) end
  redis.call('ZREMRANGEBYSCORE', P .. 's:' .. account, '-inf', now)
  table.insert(view, redis.call('ZCARD', P .. 's:' .. account))
  local left = cooling_ms(account)
  table.insert(view, left > 0 and (now + left) or 0)
end
return {existed and 1 or 0, pending, view, redis.call('ZCARD', P .. 'q'), grants}
"""
)

# ARGV: P, stale leases (account, lease) counted, stale tickets counted, tickets (ticket, score,
# candidates) counted. After an outage or a lost heartbeat: forget what this process gave back or
# stopped waiting for meanwhile, queue again what it still waits for (at its original place).
RESYNC = (
    _COMMON
    + """
local i = 2
local count = tonumber(ARGV[i]); i = i + 1
for _ = 1, count do
  redis.call('ZREM', P .. 's:' .. ARGV[i], ARGV[i + 1]); i = i + 2
end
count = tonumber(ARGV[i]); i = i + 1
for _ = 1, count do
  drop_ticket(ARGV[i]); i = i + 1
end
count = tonumber(ARGV[i]); i = i + 1
for _ = 1, count do
  redis.call('ZADD', P .. 'q', ARGV[i + 1], ARGV[i])
  redis.call('HSET', P .. 'tc', ARGV[i], ARGV[i + 2])
  i = i + 3
end
return 1
"""
)
