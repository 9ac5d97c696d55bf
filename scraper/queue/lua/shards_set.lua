-- SHARDS_SET: change a spider's recorded shard count, only if it is still the count the caller read
--   (scraper.queue.shards.open_queue checks the queue is idle, then changes it: of two processes changing
--   it at once, one wins and the other is refused), and remember both counts (reads cover their shards).
-- KEYS: shards shardsets
-- ARGV: have new
-- REPLY: 1 when changed (or already `new`: a process with the same setting changed it first); 0 when the
--   count was neither `have` nor `new`
local cur = tonumber(redis.call('GET', k.shards) or '1')  -- as a number: '03' is 3, as stored_shards reads it
if cur == tonumber(ARGV[2]) then return 1 end
if cur ~= tonumber(ARGV[1]) then return 0 end
if ARGV[2] == '1' then
  redis.call('DEL', k.shards)
else
  redis.call('SET', k.shards, ARGV[2])
end
redis.call('SADD', k.shardsets, ARGV[1], ARGV[2])
return 1
