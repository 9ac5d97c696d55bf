"""Lua scripts for the reliable queue and the SEEN/DONE sets.

Why Lua: every state transition (lease, ack, nack, reap, commit) must be atomic across the whole fleet,
and batching many transitions into one script call keeps the Redis round trips per page below one.

All keys of one spider share the hash tag ``{spider}``; scripts derive run-scoped keys (SEEN/DONE) from
the prefix they are given, which always lives in that same slot. Compatible with Redis 6.2+.

SEEN/DONE encoding: a hash per (spider, run) with at most 4,096 fields, one per value of the first 12
bits of the 64-bit fingerprint; each value is the concatenation of the remaining 52 bits (7 bytes)
of every member of that bucket. About 7 bytes per URL at 1M URLs, exact (no false positives beyond
64-bit collisions), and a bucket stays a few KiB up to ~10M URLs per run. The field ``count`` (5
chars, never a 3-char bucket) counts members.
"""

from __future__ import annotations

PRELUDE = r"""
local function hex2bin(h)
  return (string.gsub(h, '..', function(cc) return string.char(tonumber(cc, 16)) end))
end

-- bucket: the first 12 bits as 3 hex chars; member: the other 52 bits packed in 7 bytes
local function fpparts(fp)
  return string.sub(fp, 1, 3), hex2bin(string.sub(fp, 4, 16) .. '0')
end

local function set_has(key, fp)
  local b, s = fpparts(fp)
  local cur = redis.call('HGET', key, b)
  if not cur then return false end
  local i = 1
  while true do
    local p = string.find(cur, s, i, true)
    if not p then return false end
    if (p - 1) % 7 == 0 then return true end
    i = p + 1
  end
end

-- returns 1 when added, 0 when already present
local function set_add(key, fp)
  local b, s = fpparts(fp)
  local cur = redis.call('HGET', key, b)
  if cur then
    local i = 1
    while true do
      local p = string.find(cur, s, i, true)
      if not p then break end
      if (p - 1) % 7 == 0 then return 0 end
      i = p + 1
    end
    redis.call('HSET', key, b, cur .. s)
  else
    redis.call('HSET', key, b, s)
  end
  redis.call('HINCRBY', key, 'count', 1)
  return 1
end

local function ready_score(prefix, prio)
  local seq = redis.call('INCR', prefix .. 'seq')
  -- newest first within a priority (LIFO, like Scrapy's default queue): pagination chains and
  -- redelivered work move on at once instead of waiting behind the whole backlog
  return -tonumber(prio) * 1e12 - seq
end

local function prio_of(json)
  local ok, env = pcall(cjson.decode, json)
  if ok and type(env) == 'table' and tonumber(env['priority']) then
    return tonumber(env['priority'])
  end
  return 0
end

-- put a known entry back in READY as the newest of its priority; false when its envelope is gone
local function to_ready(prefix, id)
  local json = redis.call('HGET', prefix .. 'env', id)
  if not json then return false end
  redis.call('ZADD', prefix .. 'ready', ready_score(prefix, prio_of(json)), id)
  return true
end

-- enqueue one envelope unless SEEN (dont_filter skips the check); returns 1 if enqueued
local function enqueue(prefix, ttl, id, json, run, fp, prio, dont_filter)
  local seen = prefix .. 'seen:' .. run
  if dont_filter ~= '1' then
    if set_add(seen, fp) == 0 then return 0 end
    redis.call('EXPIRE', seen, ttl)
  elseif redis.call('HEXISTS', prefix .. 'env', id) == 1 then
    -- ids are fresh per discovery: a known one is this very child sent again (a commit retried after
    -- its reply was lost), maybe leased by now; queueing it again would fetch it twice
    return 0
  end
  redis.call('HSET', prefix .. 'env', id, json)
  redis.call('ZADD', prefix .. 'ready', ready_score(prefix, prio), id)
  return 1
end

local function owns(prefix, id, token)
  return redis.call('HGET', prefix .. 'lease', id) == token
end

-- breaker params: W (window), minev, rate, cbase, ccap (cooldown base/cap seconds)
local function release_parked(prefix, domain)
  local pk = prefix .. 'parked:' .. domain
  local ids = redis.call('ZRANGE', pk, 0, -1)
  local n = 0
  for _, id in ipairs(ids) do
    if to_ready(prefix, id) then n = n + 1 end
  end
  redis.call('DEL', pk)
  redis.call('SREM', prefix .. 'parkdom', domain)
  return n
end

local function park(prefix, domain, id, now)
  redis.call('ZREM', prefix .. 'inflight', id)
  redis.call('HDEL', prefix .. 'lease', id)
  redis.call('ZADD', prefix .. 'parked:' .. domain, now, id)
  redis.call('SADD', prefix .. 'parkdom', domain)
end

local function breaker_open(prefix, bk, domain, now, cbase, ccap)
  local trips = redis.call('HINCRBY', bk, 'trips', 1)
  local cool = math.min(ccap, cbase * 2 ^ (trips - 1))
  redis.call('HSET', bk, 'state', 'open', 'opened_at', now, 'open_until', now + cool, 'cooldown', cool)
  redis.call('HDEL', bk, 'probe', 'probe_until')
  redis.call('HSET', prefix .. 'brk', domain, 'open|' .. (now + cool))
end

local function breaker_close(prefix, bk, domain, now)
  redis.call('HSET', bk, 'state', 'closed', 'window', '', 'closed_at', now, 'trips', 0)
  redis.call('HDEL', bk, 'probe', 'probe_until', 'open_until')
  redis.call('HDEL', prefix .. 'brk', domain)
  return release_parked(prefix, domain)
end

-- outcome: 'C' (drift) or 'o' (item callback extracted fine) or 'n' (navigation page: no verdict)
-- returns event: '', 'opened', 'closed', 'reopened'
local function breaker_record(prefix, domain, outcome, id, now, W, minev, rate, cbase, ccap)
  local bk = prefix .. 'breaker:' .. domain
  local st = redis.call('HGET', bk, 'state') or 'closed'
  if st == 'half_open' then
    if redis.call('HGET', bk, 'probe') == id then
      if outcome == 'o' then
        return 'closed', breaker_close(prefix, bk, domain, now)  -- and how many parked it released
      elseif outcome == 'C' then
        breaker_open(prefix, bk, domain, now, cbase, ccap)
        return 'reopened'
      else
        redis.call('HDEL', bk, 'probe', 'probe_until')  -- a navigation page proves nothing
        redis.call('HSET', prefix .. 'brk', domain, 'half|0')
      end
    end
    return ''
  end
  if outcome == 'n' then return '' end
  local win = (redis.call('HGET', bk, 'window') or '') .. outcome
  if string.len(win) > W then win = string.sub(win, -W) end
  redis.call('HSET', bk, 'window', win)
  if st == 'closed' then
    local _, c = string.gsub(win, 'C', '')
    if c >= minev and c / string.len(win) >= rate then
      breaker_open(prefix, bk, domain, now, cbase, ccap)
      return 'opened'
    end
  end
  return ''
end

-- at lease time: 'go' (lease it), 'park', or 'probe' (lease it as the one half-open probe)
local function breaker_gate(prefix, domain, id, now, lease)
  local b = redis.call('HGET', prefix .. 'brk', domain)
  if not b then return 'go' end
  local sep = string.find(b, '|', 1, true)
  local st, t = string.sub(b, 1, sep - 1), tonumber(string.sub(b, sep + 1))
  local bk = prefix .. 'breaker:' .. domain
  if st == 'half' then
    if redis.call('HGET', bk, 'probe') == id then return 'go' end
    if t > now then return 'park' end
  elseif now < t then
    return 'park'
  end
  -- cooldown over (or the probe was lost): this request becomes the single fleet-wide probe
  redis.call('HSET', bk, 'state', 'half_open', 'probe', id, 'probe_until', now + lease * 2)
  redis.call('HSET', prefix .. 'brk', domain, 'half|' .. (now + lease * 2))
  return 'probe'
end

-- open breakers whose cooldown is over release exactly one parked request as the probe; returns how many
local function release_probes(prefix, now, probe_ttl)
  local released = 0
  local brk = redis.call('HGETALL', prefix .. 'brk')
  for i = 1, #brk, 2 do
    local domain, b = brk[i], brk[i + 1]
    local sep = string.find(b, '|', 1, true)
    local st, t = string.sub(b, 1, sep - 1), tonumber(string.sub(b, sep + 1))
    if t <= now then
      local pk = prefix .. 'parked:' .. domain
      local first = redis.call('ZRANGE', pk, 0, 0)
      if first[1] then
        local id = first[1]
        redis.call('ZREM', pk, id)
        local bk = prefix .. 'breaker:' .. domain
        redis.call('HSET', bk, 'state', 'half_open', 'probe', id, 'probe_until', now + probe_ttl)
        redis.call('HSET', prefix .. 'brk', domain, 'half|' .. (now + probe_ttl))
        if to_ready(prefix, id) then released = released + 1 end
      end
    end
  end
  return released
end

-- Workers whose last LEASE left READY empty are listed in WAITING (score: until when they count); when
-- work reaches READY while one waits, a message on the wake channel makes it lease at once instead of
-- at its next idle poll (by then the worker that queued the work has usually leased it itself).
-- ``except``: the worker that queued the work, if any, wakes itself without a message. WAITING's
-- scores are Redis's own clock (TIME), not the callers': hosts whose clocks disagree by a second must
-- not drop each other's entries or miss each other's wake-ups.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function wake(prefix, except)
  local now = server_now()
  local n = redis.call('ZCOUNT', prefix .. 'waiting', now, '+inf')
  if n > 0 and except and except ~= '' then
    local mine = tonumber(redis.call('ZSCORE', prefix .. 'waiting', except))
    if mine and mine >= now then n = n - 1 end
  end
  if n > 0 then
    redis.pcall('PUBLISH', prefix .. 'wake', '1')  -- an ACL without PUBLISH: waiters poll, nothing fails
  end
end

-- move due DELAYED entries and expired IN-FLIGHT leases back to READY
local function maintain(prefix, now, limit)
  local inflight, delayed = prefix .. 'inflight', prefix .. 'delayed'
  local leasek = prefix .. 'lease'
  local promoted, reaped = release_probes(prefix, now, 120), {}
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', delayed, id)
    if to_ready(prefix, id) then promoted = promoted + 1 end
  end
  local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(expired) do
    redis.call('ZREM', inflight, id)
    local owner = redis.call('HGET', leasek, id)
    redis.call('HDEL', leasek, id)
    if to_ready(prefix, id) then  -- redelivered work goes to the front of its priority level
      table.insert(reaped, id)
      table.insert(reaped, owner or '')
    end
  end
  if promoted > 0 or #reaped > 0 then wake(prefix) end
  return promoted, reaped
end

-- hand entry id to worker under a new lease (LEASE, COMMIT's claim); returns its token and deliveries.
-- The nonce keeps tokens unique even if Redis lost recent writes and dlv repeats.
local function grant(prefix, id, now, lease, worker, nonce)
  local dlv = redis.call('HINCRBY', prefix .. 'dlv', id, 1)
  local token = worker .. '#' .. dlv .. '#' .. nonce
  redis.call('ZADD', prefix .. 'inflight', now + lease, id)
  redis.call('HSET', prefix .. 'lease', id, token)
  return token, dlv
end

-- lease a just-enqueued child to this worker (see COMMIT); returns token, deliveries, or '', -1 when
-- the child stays in READY for LEASE to decide (DONE, its domain held or behind a breaker)
local function claim_child(prefix, id, json, run, fp, now, lease, worker, nonce)
  if set_has(prefix .. 'done:' .. run, fp) then return '', -1 end
  local ok, env = pcall(cjson.decode, json)
  if not ok or type(env) ~= 'table' then return '', -1 end
  local domain = env['domain']
  if type(domain) == 'string' and domain ~= '' then
    if redis.call('HEXISTS', prefix .. 'brk', domain) == 1 then return '', -1 end
    local hold = tonumber(redis.call('HGET', prefix .. 'hold', domain))
    if hold and hold > now then return '', -1 end
  end
  redis.call('ZREM', prefix .. 'ready', id)
  return grant(prefix, id, now, lease, worker, nonce)
end

local function forget(prefix, id)
  redis.call('ZREM', prefix .. 'inflight', id)
  redis.call('HDEL', prefix .. 'lease', id)
  redis.call('HDEL', prefix .. 'env', id)
  redis.call('HDEL', prefix .. 'dlv', id)
end
"""

# ARGV: prefix, ttl, now, run, then groups of (id, json, fp, prio, dont_filter)
SEED = PRELUDE + r"""
local prefix, ttl, now, run = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local enq = 0
for i = 5, #ARGV, 5 do
  enq = enq + enqueue(prefix, ttl, ARGV[i], ARGV[i+1], run, ARGV[i+2], ARGV[i+3], ARGV[i+4])
end
redis.call('ZADD', prefix .. 'runs', 'NX', now, run)
if enq > 0 then wake(prefix) end
return enq
"""

# The bulk form of SEED (FleetQueue.seed, `fleet seed`), run inside MULTI right after one HSET of every
# entry's envelope into prefix..'env'. Why the envelope JSON stays out of Lua: Lua 5.1 interns every
# string, hashing only ~32 sampled bytes of a long one, and envelopes that differ in a few bytes
# (URL, fp, time) collide into long chains: ~9 µs an entry just to pass them in ARGV, vs ~1 µs for an
# HSET. Leaves the state SEED leaves for the same entries with dont_filter '0': SEEN checked and
# extended per entry in input order (members stored before the call found 7-byte aligned, as set_add
# finds them), READY scores from the seq values SEED's INCRs would return, same count, TTL and runs;
# a duplicate's envelope, just written by the HSET, is deleted again (the one difference: a duplicate
# whose random id equals a queued entry's, 2^-64 per pair, deletes that entry's envelope). Each SEEN
# bucket is read and written once per call, and seq, count and TTL once per call, not once per entry.
# ARGV: prefix, ttl, now, run, then groups of (id, fp, prio)
SEED_BULK = PRELUDE + r"""
local prefix, ttl, now, run = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local seen = prefix .. 'seen:' .. run
local sub, find = string.sub, string.find
local fresh, nfresh, dups, ndups = {}, 0, {}, 0  -- ARGV indexes of fresh entries, ids of duplicates
if ttl <= 0 then
  -- never with Fleet's config (FLEET_DEDUP_TTL >= 1): each EXPIRE drops SEEN at once, so go entry by entry
  for i = 5, #ARGV, 3 do
    if set_add(seen, ARGV[i+1]) == 1 then
      redis.call('EXPIRE', seen, ttl)
      nfresh = nfresh + 1
      fresh[nfresh] = i
    else
      ndups = ndups + 1
      dups[ndups] = ARGV[i]
    end
  end
else
  local hx = {}
  for c = 0, 255 do hx[string.format('%02x', c)] = string.char(c) end
  -- per bucket: the stored string (false: none), the members added by this call (list, and set)
  local stored, added, members = {}, {}, {}
  for i = 5, #ARGV, 3 do
    local fp = ARGV[i+1]
    local b, s = sub(fp, 1, 3), nil
    local c1, c2, c3, c4 = hx[sub(fp, 4, 5)], hx[sub(fp, 6, 7)], hx[sub(fp, 8, 9)], hx[sub(fp, 10, 11)]
    local c5, c6, c7 = hx[sub(fp, 12, 13)], hx[sub(fp, 14, 15)], hx[sub(fp, 16, 16) .. '0']
    if c7 and c6 and c5 and c4 and c3 and c2 and c1 and #fp == 16 then
      s = c1 .. c2 .. c3 .. c4 .. c5 .. c6 .. c7
    else
      b, s = fpparts(fp)  -- not 16 lowercase hex digits: exactly what set_add does with it
    end
    local cur, mine = stored[b], members[b]
    if cur == nil then
      cur = redis.call('HGET', seen, b) or false
      stored[b] = cur
      mine = {}
      members[b] = mine
      added[b] = {}
    end
    local dup = mine[s] or false
    if not dup and cur then
      -- a member stored before this call, found as set_add finds it (7-byte aligned)
      local j = 1
      while true do
        local p = find(cur, s, j, true)
        if not p then break end
        if (p - 1) % 7 == 0 then dup = true; break end
        j = p + 1
      end
    end
    if dup then
      ndups = ndups + 1
      dups[ndups] = ARGV[i]
    else
      mine[s] = true
      local list = added[b]
      list[#list + 1] = s
      nfresh = nfresh + 1
      fresh[nfresh] = i
    end
  end
  if nfresh > 0 then
    local flat, n = {}, 0
    for b, list in pairs(added) do
      if list[1] then
        flat[n + 1] = b
        flat[n + 2] = (stored[b] or '') .. table.concat(list)
        n = n + 2
        if n >= 1000 then redis.call('HSET', seen, unpack(flat, 1, n)); n = 0 end
      end
    end
    if n > 0 then redis.call('HSET', seen, unpack(flat, 1, n)) end
    redis.call('HINCRBY', seen, 'count', nfresh)
    redis.call('EXPIRE', seen, ttl)
  end
end
-- READY scores as ready_score gives them, from the seq values its INCRs would have returned
local seq = tonumber(redis.call('GET', prefix .. 'seq') or '0')
local scored, n = {}, 0
for k = 1, nfresh do
  local i = fresh[k]
  scored[n + 1] = -tonumber(ARGV[i+2]) * 1e12 - (seq + k)
  scored[n + 2] = ARGV[i]
  n = n + 2
  if n >= 1000 then redis.call('ZADD', prefix .. 'ready', unpack(scored, 1, n)); n = 0 end
end
if n > 0 then redis.call('ZADD', prefix .. 'ready', unpack(scored, 1, n)) end
if nfresh > 0 then redis.call('INCRBY', prefix .. 'seq', nfresh) end
for k = 1, ndups, 1000 do
  redis.call('HDEL', prefix .. 'env', unpack(dups, k, math.min(k + 999, ndups)))
end
redis.call('ZADD', prefix .. 'runs', 'NX', now, run)
if nfresh > 0 then wake(prefix) end
return nfresh
"""

# ARGV: prefix, now, n, lease_seconds, worker, maintain_limit
# returns {promoted, reaped_flat, leased_flat(id, json, deliveries, token), skipped_flat(id, json)}
LEASE = PRELUDE + r"""
local prefix, now, n, lease, worker, limit, nonce = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7]
local promoted, reaped = maintain(prefix, now, limit)
local leased, skipped, held, parked = {}, {}, 0, 0
if n > 0 then
  local ids = redis.call('ZRANGE', prefix .. 'ready', 0, n - 1)
  for _, id in ipairs(ids) do
    local json = redis.call('HGET', prefix .. 'env', id)
    redis.call('ZREM', prefix .. 'ready', id)
    if json then
      local ok, env = pcall(cjson.decode, json)
      local done = false
      if ok and type(env) == 'table' and type(env['run']) == 'string' and type(env['fp']) == 'string'
         and string.len(env['fp']) == 16 and string.match(env['fp'], '^%x+$') then
        done = set_has(prefix .. 'done:' .. env['run'], env['fp'])
      end
      local hold = nil
      if ok and type(env) == 'table' and type(env['domain']) == 'string' and env['domain'] ~= '' then
        hold = tonumber(redis.call('HGET', prefix .. 'hold', env['domain']))
      end
      if done then
        forget(prefix, id)
        table.insert(skipped, id)
        table.insert(skipped, json)
      elseif ok and type(env) == 'table' and type(env['domain']) == 'string' and env['domain'] ~= ''
             and breaker_gate(prefix, env['domain'], id, now, lease) == 'park' then
        redis.call('ZADD', prefix .. 'parked:' .. env['domain'], now, id)
        redis.call('SADD', prefix .. 'parkdom', env['domain'])
        parked = parked + 1
      elseif hold and hold > now then
        -- the target domain is backing off fleet-wide: wait in DELAYED, no delivery, no budget
        redis.call('ZADD', prefix .. 'delayed', hold, id)
        held = held + 1
      else
        local token, dlv = grant(prefix, id, now, lease, worker, nonce .. #leased)
        table.insert(leased, id)
        table.insert(leased, json)
        table.insert(leased, dlv)
        table.insert(leased, token)
      end
    end
  end
end
local remaining = redis.call('ZCARD', prefix .. 'ready')
if n > 0 then
  local waiting = prefix .. 'waiting'
  if remaining == 0 then
    -- READY is empty: this worker waits for news of work (see wake) instead of asking again at once;
    -- listed for over twice its longest idle poll (0.6 s). A batch that was all held, parked or done
    -- leased nothing but leaves READY as it is: the worker asks again at once.
    local snow = server_now()
    redis.call('ZREMRANGEBYSCORE', waiting, '-inf', '(' .. snow)
    redis.call('ZADD', waiting, snow + 2, worker)
  else
    redis.call('ZREM', waiting, worker)
  end
end
return {promoted, reaped, leased, skipped, held, parked, remaining}
"""

# Per-domain backoff shared by the fleet. A burst of 429/503 answers within one step's window
# advances the domain by one step, not N. ARGV: prefix, domain, now, base, cap, rnd, min_wait.
# Returns the hold deadline (string).
HOLD = r"""
local k = ARGV[1] .. 'hold'
local domain, now, base, cap = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rnd, minwait = tonumber(ARGV[6]), tonumber(ARGV[7])
local cur = tonumber(redis.call('HGET', k, domain) or '0')
local step = tonumber(redis.call('HGET', k, domain .. '#step') or '0')
local last = tonumber(redis.call('HGET', k, domain .. '#at') or '0')
if step > 0 and now - last < math.min(cap, base * 2 ^ (step - 1)) then
  -- same burst as the last step
  if minwait > 0 and now + minwait > cur then
    cur = now + minwait
    redis.call('HSET', k, domain, cur)
  end
  return tostring(cur)
end
if now - last > cap * 4 then step = 0 end
local ceiling = math.min(cap, base * 2 ^ step)
local u = now + math.max(ceiling * rnd, minwait)
redis.call('HSET', k, domain, u, domain .. '#step', step + 1, domain .. '#at', now)
return tostring(u)
"""

# ARGV: prefix, now, limit -> {promoted, reaped_flat}
MAINTAIN = PRELUDE + r"""
local promoted, reaped = maintain(ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
return {promoted, reaped}
"""

# ARGV: prefix, deadline, then pairs (id, token). Returns the ids whose lease was lost.
HEARTBEAT = PRELUDE + r"""
local prefix, deadline = ARGV[1], tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  if owns(prefix, ARGV[i], ARGV[i+1]) then
    redis.call('ZADD', prefix .. 'inflight', 'XX', deadline, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
"""

# Commit — record DONE, enqueue discovered requests (they inherit the parent's run), feed item-callback
# outcomes to the domain's drift breaker, then acknowledge; one script, one round trip per batch.
# An entry with fp '' only enqueues children (sent as soon as the callback is done, before the writes).
# A commit may claim one of its children (1-based index): when that child was really enqueued (not SEEN,
# not DONE) and its domain is neither held nor behind a breaker, it goes straight from READY to IN-FLIGHT
# under a lease of this worker's, exactly as LEASE would hand it out. The worker has already started
# fetching it (page N+1 of a pagination chain); without the claim the fetch is thrown away. The claim's
# token derives from the nonce, so a retry with the same nonce (the first reply was lost) finds the
# child already SEEN but still leased under that token, and answers it as claimed: without this the
# chain would wait for the lease to expire.
# ARGV: prefix, ttl, now, W, minev, rate, cbase, ccap, ack ('1'/'0'), lease seconds, worker, nonce, then
#   per commit: run, fp, id, token, domain, outcome ('' = not tracked), claim (0 = none), ndisc,
#   then ndisc groups (id, json, fp, prio, dont_filter)
# Returns {enqueued counts, events flat (domain, event), acked flags, claims flat (token, deliveries)}; an
# unclaimed child gives ('', 0) when it was not queued (SEEN) and ('', -1) when it waits in READY
# (one count/flag/claim per commit).
COMMIT = PRELUDE + r"""
local prefix, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local W, minev, rate, cbase, ccap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local do_ack = ARGV[9] == '1'
local lease, worker, nonce = tonumber(ARGV[10]), ARGV[11], ARGV[12]
local out, events, acked, claims = {}, {}, {}, {}
local fresh = 0
local i = 13
while i <= #ARGV do
  local run, fp, id, token, domain, outcome = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local claim, nd = tonumber(ARGV[i+6]), tonumber(ARGV[i+7])
  i = i + 8
  local enq = 0
  local ctoken, cdlv = '', 0
  local took = 0  -- 1 when this call moved the claimed child from READY to IN-FLIGHT
  for k = 1, nd do
    local added = enqueue(prefix, ttl, ARGV[i], ARGV[i+1], run, ARGV[i+2], ARGV[i+3], ARGV[i+4])
    enq = enq + added
    if k == claim and added == 1 then
      ctoken, cdlv = claim_child(prefix, ARGV[i], ARGV[i+1], run, ARGV[i+2], now, lease, worker, nonce .. 'c' .. #claims)
      if ctoken ~= '' then took = 1 end
    elseif k == claim and worker ~= '' then
      -- a retry of a call whose reply was lost: the child this very claim took is still ours
      local mine = worker .. '#1#' .. nonce .. 'c' .. #claims
      if redis.call('HGET', prefix .. 'lease', ARGV[i]) == mine then ctoken, cdlv = mine, 1 end
    end
    i = i + 5
  end
  table.insert(claims, ctoken)
  table.insert(claims, cdlv)
  fresh = fresh + enq - took
  local ok = 0
  if fp ~= '' then
    local done = prefix .. 'done:' .. run
    set_add(done, fp)
    redis.call('EXPIRE', done, ttl)
    if outcome ~= '' and domain ~= '' then
      local ev, released = breaker_record(prefix, domain, outcome, id, now, W, minev, rate, cbase, ccap)
      fresh = fresh + (released or 0)  -- a breaker this commit closed sent its parked requests to READY
      if ev ~= '' then
        table.insert(events, domain)
        table.insert(events, ev)
      end
    end
    if do_ack and owns(prefix, id, token) then
      forget(prefix, id)
      ok = 1
    end
  end
  table.insert(out, enq)
  table.insert(acked, ok)
end
if fresh > 0 then wake(prefix, worker) end  -- children left in READY for any other worker
return {out, events, acked, claims}
"""

# Acknowledge without committing. ARGV: prefix, then pairs (id, token). Returns 1/0 per pair.
ACK = PRELUDE + r"""
local prefix = ARGV[1]
local out = {}
for i = 2, #ARGV, 2 do
  if owns(prefix, ARGV[i], ARGV[i+1]) then
    forget(prefix, ARGV[i])
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
"""

# Drift (class C): record it on the breaker and PARK the request (not DONE, not acked: it is
# re-extracted after the fix). ARGV: prefix, now, W, minev, rate, cbase, ccap, id, token, domain, sample
# Returns {event, window}.
DRIFT = PRELUDE + r"""
local prefix, now = ARGV[1], tonumber(ARGV[2])
local W, minev, rate, cbase, ccap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local id, token, domain, sample = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
if not owns(prefix, id, token) then return {'lost', ''} end
local ev = breaker_record(prefix, domain, 'C', id, now, W, minev, rate, cbase, ccap)
park(prefix, domain, id, now)
local bk = prefix .. 'breaker:' .. domain
local ok, samples = pcall(cjson.decode, redis.call('HGET', bk, 'samples') or '[]')
if not ok or type(samples) ~= 'table' then samples = {} end
table.insert(samples, cjson.decode(sample))
while #samples > 5 do table.remove(samples, 1) end
redis.call('HSET', bk, 'samples', cjson.encode(samples), 'last_drift_at', now)
redis.call('HINCRBY', bk, 'drift_events', 1)
return {ev, redis.call('HGET', bk, 'window') or ''}
"""

# Close a breaker by hand and release its parked requests. ARGV: prefix, domain, now -> released
BREAKER_RESET = PRELUDE + r"""
local bk = ARGV[1] .. 'breaker:' .. ARGV[2]
local n = breaker_close(ARGV[1], bk, ARGV[2], tonumber(ARGV[3]))
if n > 0 then wake(ARGV[1]) end
return n
"""

# ARGV: prefix, id, token, due, json. Moves a lease to DELAYED with an updated envelope.
NACK = PRELUDE + r"""
local prefix, id, token, due, json = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not owns(prefix, id, token) then return 0 end
redis.call('ZREM', prefix .. 'inflight', id)
redis.call('HDEL', prefix .. 'lease', id)
redis.call('HSET', prefix .. 'env', id, json)
redis.call('ZADD', prefix .. 'delayed', due, id)
return 1
"""

# ARGV: prefix, now, then pairs (id, token). Returns leases to the front of READY at once (shutdown).
RELEASE = PRELUDE + r"""
local prefix = ARGV[1]
local n = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if owns(prefix, id, ARGV[i+1]) then
    redis.call('ZREM', prefix .. 'inflight', id)
    redis.call('HDEL', prefix .. 'lease', id)
    -- handed back unattempted (graceful shutdown): not a delivery that was lost, so not counted
    -- against FLEET_MAX_LOST_DELIVERIES nor in the next delivery's attempt number
    if redis.call('HINCRBY', prefix .. 'dlv', id, -1) < 0 then redis.call('HSET', prefix .. 'dlv', id, 0) end
    if to_ready(prefix, id) then n = n + 1 end
  end
end
if n > 0 then wake(prefix) end
return n
"""

# ARGV: prefix, maxlen, id, token ('' = no ownership check), then field/value pairs for the stream.
DEAD = PRELUDE + r"""
local prefix, maxlen, id, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if token ~= '' and not owns(prefix, id, token) then return 0 end
local fields = {}
for i = 5, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('XADD', prefix .. 'dlq', 'MAXLEN', '~', maxlen, '*', unpack(fields))
forget(prefix, id)
redis.call('ZREM', prefix .. 'ready', id)
redis.call('ZREM', prefix .. 'delayed', id)
return 1
"""

# ARGV: key, then fps. Returns 1/0 per fp (membership in a SEEN/DONE set).
HAS = PRELUDE + r"""
local out = {}
for i = 2, #ARGV do
  out[#out + 1] = set_has(ARGV[1], ARGV[i]) and 1 or 0
end
return out
"""
