-- HEARTBEAT: extend the leases this worker still owns to a new deadline.
-- KEYS: lease inflight
-- ARGV: deadline
-- ARGV...: id token
-- REPLY: the ids whose lease was lost (owned by another token, or gone)
local deadline = tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  if owns(k, ARGV[i], ARGV[i+1]) then
    redis.call('ZADD', k.inflight, 'XX', deadline, ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
