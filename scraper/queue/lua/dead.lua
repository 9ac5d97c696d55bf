-- DEAD: move a lease (or, with token '', any entry) to the DLQ stream with its evidence fields.
-- KEYS: lease inflight env dlv dlq ready delayed cancelled
-- ARGV: maxlen id token
-- ARGV...: field value
-- REPLY: 1 when dead-lettered, 0 when the lease was lost, 2 when its run (field `run`) was cancelled: the
--   entry is forgotten and no DLQ entry is written (`fleet cancel` leaves no DLQ entries behind)
local maxlen, id, token = ARGV[1], ARGV[2], ARGV[3]
if token ~= '' and not owns(k, id, token) then return 0 end
if redis.call('EXISTS', k.cancelled) == 1 then
  for i = 4, #ARGV - 1, 2 do
    if ARGV[i] == 'run' and redis.call('HEXISTS', k.cancelled, ARGV[i+1]) == 1 then
      forget(k, id)
      redis.call('ZREM', k.ready, id)
      redis.call('ZREM', k.delayed, id)
      return 2
    end
  end
end
local fields = {}
for i = 4, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('XADD', k.dlq, 'MAXLEN', '~', maxlen, '*', unpack(fields))
forget(k, id)
redis.call('ZREM', k.ready, id)
redis.call('ZREM', k.delayed, id)
return 1
