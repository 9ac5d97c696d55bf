-- BREAKER_TRIP: open a domain's breaker in this shard of a spider because another shard opened it: a
--   spider split into shards (FLEET_QUEUE_SHARDS) keeps a breaker per shard, and scraper.queue.shards
--   mirrors an opening into the others, so one shard's drift stops the domain in all of them.
-- KEYS: brk breaker
-- ARGV: domain now cbase ccap
-- REPLY: 1 when this shard's breaker was closed and is now open; 0 when it was open or half-open already
--   (a half-open one's probe decides for it)
local st = redis.call('HGET', k.breaker, 'state') or 'closed'
if st ~= 'closed' then return 0 end
breaker_open(k, k.breaker, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
