-- HOLD: per-domain backoff shared by the fleet. A burst of 429/503 answers within one step's window
--   advances the domain by one step, not N.
-- KEYS: hold
-- ARGV: domain now base cap rnd minwait
-- REPLY: string: the domain's hold deadline (epoch seconds)
local key = k.hold
local domain, now, base, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rnd, minwait = tonumber(ARGV[5]), tonumber(ARGV[6])
local cur = tonumber(redis.call('HGET', key, domain) or '0')
local step = tonumber(redis.call('HGET', key, domain .. '#step') or '0')
local last = tonumber(redis.call('HGET', key, domain .. '#at') or '0')
if step > 0 and now - last < math.min(cap, base * 2 ^ (step - 1)) then
  -- same burst as the last step
  if minwait > 0 and now + minwait > cur then
    cur = now + minwait
    redis.call('HSET', key, domain, cur)
  end
  return tostring(cur)
end
if now - last > cap * 4 then step = 0 end
local ceiling = math.min(cap, base * 2 ^ step)
local u = now + math.max(ceiling * rnd, minwait)
redis.call('HSET', key, domain, u, domain .. '#step', step + 1, domain .. '#at', now)
return tostring(u)
