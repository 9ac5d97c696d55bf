-- HEARTBEAT: extend the leases this worker still owns to a new deadline.
-- KEYS: lease inflight
-- ARGV: now lease
-- ARGV...: id token
-- REPLY: the ids whose lease was lost (owned by another token, or gone)
-- The new deadline is now + lease as LEASE sets it (lua/_helpers.lua: lease_deadline).
local deadline = lease_deadline(tonumber(ARGV[1]), tonumber(ARGV[2]))
local lost = {}
for i = 3, #ARGV, 2 do
  if owns(k, ARGV[i], ARGV[i+1]) then
    unlogged('ZADD', k.inflight, 'XX', deadline, ARGV[i])  -- a lease is volatile (lua/_helpers.lua: unready)
  else
    table.insert(lost, ARGV[i])
  end
end
return lost
