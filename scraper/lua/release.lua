-- RELEASE: return leases this worker owns to the front of READY at once (shutdown).
-- KEYS: lease inflight env ready seq waiting wake dlv
-- ARGV: -
-- ARGV...: id token
-- REPLY: integer: how many entries went back to READY
local n = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if owns(k, id, ARGV[i+1]) then
    redis.call('ZREM', k.inflight, id)
    redis.call('HDEL', k.lease, id)
    -- handed back unattempted (graceful shutdown): not a delivery that was lost, so not counted
    -- against FLEET_MAX_LOST_DELIVERIES nor in the next delivery's attempt number
    if redis.call('HINCRBY', k.dlv, id, -1) < 0 then redis.call('HSET', k.dlv, id, 0) end
    if to_ready(k, id) then n = n + 1 end
  end
end
if n > 0 then wake(k) end
return n
