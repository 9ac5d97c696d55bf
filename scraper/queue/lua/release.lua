-- RELEASE: return leases this worker owns to the front of READY at once (shutdown); IN-FLIGHT's encoding
--   mark goes if it is left alone (lua/_helpers.lua: big_encoding): the last worker to stop leaves none.
-- KEYS: lease inflight env ready seq waiting wake
-- ARGV: -
-- ARGV...: id token
-- REPLY: integer: how many entries went back to READY
local n = 0
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if owns(k, id, ARGV[i+1]) then
    redis.call('ZREM', k.inflight, id)
    lease_end(k, id, ARGV[i+1])
    if to_ready(k, id) then n = n + 1 end
  end
end
if n > 0 then wake(k, n) end
unmark_idle(k)
return n
