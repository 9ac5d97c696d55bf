-- CANCEL: one batch of `fleet cancel`'s sweep: drop the given entries of a cancelled run from one queued
--   set (READY, DELAYED or a domain's PARKED), unexecuted, with their envelopes.
-- KEYS: cancelled queued env lease dlv
-- ARGV: run
-- ARGV...: id
-- REPLY: how many entries were dropped (an id no longer in `queued`, or of another run, is left alone)
-- Refuses (returns 0) unless the run is marked in `cancelled` first: the mark is what stops the run (LEASE,
-- COMMIT, NACK and DEAD honour it); the sweep only empties the queue early and counts.
local run = ARGV[1]
if redis.call('HEXISTS', k.cancelled, run) == 0 then return 0 end
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', k.queued, id) then
    local json = redis.call('HGET', k.env, id)
    local mine = false
    if json then
      local ok, env = pcall(cjson.decode, json)
      mine = ok and type(env) == 'table' and env['run'] == run
    end
    if mine then
      redis.call('ZREM', k.queued, id)
      redis.call('HDEL', k.env, id)
      unlogged('HDEL', k.lease, id)  -- its deliveries (lua/_helpers.lua: deliveries; unready: unlogged)
      if dlv_old(k) then redis.call('HDEL', k.dlv, id) end
      n = n + 1
    end
  end
end
return n
