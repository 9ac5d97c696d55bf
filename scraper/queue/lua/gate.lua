-- GATE: ask for permits to fetch from one domain, for the whole fleet: its in-flight limit (the smaller of
--   CONCURRENT_REQUESTS_PER_DOMAIN and the AIMD window) and its minimum spacing (GCRA), in one atomic step.
-- KEYS: permits gstate gdz
-- ARGV: domain limit spacing burst aimd start wmax permit_ttl ahead
-- ARGV...: id
-- REPLY: {granted, retry_ms, inflight, limit, window}: the first `granted` ids now hold a permit (expiring
--   ttl seconds from now unless UNGATE renews it); retry_ms: when to ask again for the others (0: all
--   granted); inflight after the grant; limit: the effective in-flight limit (0: none); window: the AIMD
--   window as a string ('' without AIMD); then one wait_ms per granted id: how long its worker holds it
--   before the fetch (a slot reserved up to `ahead` seconds early, so a late worker does not push every
--   later slot back: the spacing's mean stays the spacing).
-- Clock: Redis's own (TIME), so hosts whose clocks disagree still space one domain correctly. GCRA: `tat`
-- is the domain's theoretical arrival time; a dispatch is allowed when tat - now <= spacing * (burst - 1),
-- and moves tat to max(tat, now) + spacing. spacing is this dispatch's (the caller draws the
-- RANDOMIZE_DOWNLOAD_DELAY factor). An expired permit (its worker died) is pruned here before counting.
-- gdz, the index of gated domains (`fleet domains`), is scored by each domain's last GATE; a member older
-- than the state's lifetime (STATE_TTL: its gstate has expired) leaves it here, at most 100 a call (each
-- call adds at most one member, so the index keeps up), and the whole index expires with the last state.
-- It replaces the SET `gdoms` of earlier versions, which this script no longer touches (scraper/queue/gating.py
-- moves its live members over).
local STATE_TTL = 86400
local domain, limit, spacing, burst = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local aimd, start, wmax, ttl = ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local now = server_now()
redis.call('ZREMRANGEBYSCORE', k.permits, '-inf', now)
local inflight = redis.call('ZCARD', k.permits)
local st = redis.call('HMGET', k.gstate, 'tat', 'win', 'lat', 'rw', 'rc')
local tat = tonumber(st[1]) or 0
local eff, win = limit, nil
if aimd then
  win = math.max(1, math.min(tonumber(st[2]) or start, wmax))
  local w = math.floor(win)
  if eff == 0 or w < eff then eff = w end
end
local tau = spacing * (burst - 1)
local granted, retry = 0, 0
local ahead = tonumber(ARGV[9])
local waits = {}
for i = 10, #ARGV do
  if eff > 0 and inflight >= eff then
    -- full: a permit comes back when a fetch ends; ask again after a quarter of the smoothed latency
    retry = math.floor(math.max(20, math.min(250, (tonumber(st[3]) or 100) / 4)))
    break
  end
  if spacing > 0 then
    local t = math.max(tat, now)
    if t - now > tau + ahead then
      retry = math.max(1, math.ceil((t - tau - ahead - now) * 1000))
      break
    end
    table.insert(waits, math.max(0, math.floor((t - tau - now) * 1000)))
    tat = t + spacing
  else
    table.insert(waits, 0)
  end
  redis.call('ZADD', k.permits, now + ttl, ARGV[i])
  inflight = inflight + 1
  granted = granted + 1
end
-- the recent rate: dispatches counted over windows of at least 5 s
local rw, rc = tonumber(st[4]) or now, (tonumber(st[5]) or 0) + granted
local fields = {'limit', limit, 'spacing', spacing, 'at', now, 'rw', rw, 'rc', rc}
if now - rw >= 5 then
  fields[8], fields[10] = now, 0
  table.insert(fields, 'rate')
  table.insert(fields, rc / (now - rw))
end
if spacing > 0 then
  table.insert(fields, 'tat')
  table.insert(fields, tat)
end
if aimd then
  for _, x in ipairs({'aimd', 1, 'win', win, 'wmax', wmax}) do table.insert(fields, x) end
else
  table.insert(fields, 'aimd')
  table.insert(fields, 0)
end
redis.call('HSET', k.gstate, unpack(fields))
redis.call('EXPIRE', k.gstate, STATE_TTL)
redis.call('EXPIRE', k.permits, math.ceil(ttl) + 60)
redis.call('ZADD', k.gdz, now, domain)
local stale = redis.call('ZRANGEBYSCORE', k.gdz, '-inf', now - STATE_TTL, 'LIMIT', 0, 100)
if #stale > 0 then redis.call('ZREM', k.gdz, unpack(stale)) end
redis.call('EXPIRE', k.gdz, STATE_TTL)
local reply = {granted, retry, inflight, eff, win and tostring(win) or ''}
for _, w in ipairs(waits) do table.insert(reply, w) end
return reply
