-- DEAD: move a lease (or, with token '', any entry) to the DLQ stream with its evidence fields.
-- KEYS: lease inflight env dlv dlq ready delayed
-- ARGV: maxlen id token
-- ARGV...: field value
-- REPLY: 1 when dead-lettered, 0 when the lease was lost
local maxlen, id, token = ARGV[1], ARGV[2], ARGV[3]
if token ~= '' and not owns(k, id, token) then return 0 end
local fields = {}
for i = 4, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('XADD', k.dlq, 'MAXLEN', '~', maxlen, '*', unpack(fields))
forget(k, id)
redis.call('ZREM', k.ready, id)
redis.call('ZREM', k.delayed, id)
return 1
