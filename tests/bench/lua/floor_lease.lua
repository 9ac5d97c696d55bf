-- The floor of a LEASE (tests/bench/costs.py --floor): only the writes a lease cannot do without, batched.
-- KEYS: ready env inflight lease
-- ARGV: n deadline worker
-- REPLY: flat (id, json)
-- Not done here, and done by Fleet's LEASE: maintenance (promotions, reaps), the DONE check, holds,
-- breakers, cancelled runs, deliveries, tokens per entry, the AOF-only READY bookkeeping, WAITING.
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then return {} end
local jsons = redis.call('HMGET', KEYS[2], unpack(ids))
local inf, tok, out = {}, {}, {}
for i = 1, #ids do
  local i2 = i + i
  inf[i2 - 1], inf[i2] = ARGV[2], ids[i]
  tok[i2 - 1], tok[i2] = ids[i], ARGV[3]
  out[i2 - 1], out[i2] = ids[i], jsons[i]
end
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('ZADD', KEYS[3], unpack(inf))
redis.call('HSET', KEYS[4], unpack(tok))
return out
