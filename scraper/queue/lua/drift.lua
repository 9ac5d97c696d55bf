-- DRIFT: a class C outcome: record it on the domain's breaker and PARK the request (not DONE, not acked:
--   it is re-extracted after the fix).
-- KEYS: lease inflight brk parkdom env ready seq breaker parked cancelled dlv
-- ARGV: prefix now W minev rate cbase ccap id token domain sample run
-- REPLY: {event ('' | 'opened' | 'reopened' | 'lost' when the lease was not ours | 'cancelled' when the
--   request's run was cancelled (`fleet cancel`): forgotten, not parked, nothing recorded on the breaker),
--   window}
-- COMPUTED: none beyond KEYS: breaker and parked are the domain's (Keys.breaker(domain), Keys.parked(domain)),
--   declared; the shared breaker helpers build the same two names from prefix and domain, because COMMIT
--   and LEASE, which share them, cannot know the domains in advance.
local now = tonumber(ARGV[2])
local W, minev, rate, cbase, ccap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local id, token, domain, sample, run = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
if not owns(k, id, token) then return {'lost', ''} end
if redis.call('HEXISTS', k.cancelled, run) == 1 then
  forget(k, id)
  return {'cancelled', ''}
end
local ev = breaker_record(k, domain, 'C', id, now, W, minev, rate, cbase, ccap)
park(k, domain, id, now)
local bk = k.breaker
local ok, samples = pcall(cjson.decode, redis.call('HGET', bk, 'samples') or '[]')
if not ok or type(samples) ~= 'table' then samples = {} end
table.insert(samples, cjson.decode(sample))
while #samples > 5 do table.remove(samples, 1) end
redis.call('HSET', bk, 'samples', cjson.encode(samples), 'last_drift_at', now)
redis.call('HINCRBY', bk, 'drift_events', 1)
return {ev, redis.call('HGET', bk, 'window') or ''}
