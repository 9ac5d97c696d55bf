-- PROXY_BAN: one ban of a (proxy, domain) pair, fleet-wide: consecutive+1, bans+1, cooling_until = now +
--   jitter; a burst of bans while cooling is one ban, and a cooldown is never shortened.
-- KEYS: health
-- ARGV: now base cap rnd
-- REPLY: string: the pair's cooling_until (epoch seconds)
local key, now, base, cap, rnd = k.health, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HINCRBY', key, 'bans', 1)
local current = tonumber(redis.call('HGET', key, 'cooling_until') or '0')
if current > now then
  -- already cooling: a burst of bans is one ban, and a cooldown is never shortened
  redis.call('HSET', key, 'last_ban', now)
  return redis.call('HGET', key, 'cooling_until')
end
local consecutive = redis.call('HINCRBY', key, 'consecutive', 1)
local ceiling = math.min(cap, base * (2 ^ (consecutive - 1)))
local cool = now + ceiling * rnd
redis.call('HSET', key, 'cooling_until', cool, 'last_ban', now)
redis.call('EXPIRE', key, 7 * 86400)
return redis.call('HGET', key, 'cooling_until')
