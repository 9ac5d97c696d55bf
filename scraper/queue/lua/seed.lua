-- SEED: enqueue envelopes one by one unless the run's SEEN has them (FleetQueue.requeue).
-- KEYS: env ready seq runs waiting wake seen
-- ARGV: ttl now run
-- ARGV...: id json fp prio dont_filter
-- REPLY: integer: how many entries were enqueued
-- COMPUTED: seen..':'..bucket, the SEEN set's bucket strings (lua/_helpers.lua); within seen's hash tag.
-- seen is the run's SEEN set (Keys.seen(run)); dont_filter '1' skips the SEEN check.
local ttl, now, run = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local enq = 0
for i = 4, #ARGV, 5 do
  enq = enq + enqueue(k, k.seen, ttl, ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4])
end
redis.call('ZADD', k.runs, 'NX', now, run)
if enq > 0 then wake(k, enq) end
return enq
