-- NACK: move a lease this worker owns to DELAYED with an updated envelope (a retry later).
-- KEYS: lease inflight env delayed
-- ARGV: id token due json
-- REPLY: 1 when moved, 0 when the lease was lost
local id, token, due, json = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not owns(k, id, token) then return 0 end
redis.call('ZREM', k.inflight, id)
redis.call('HDEL', k.lease, id)
redis.call('HSET', k.env, id, json)
redis.call('ZADD', k.delayed, due, id)
return 1
