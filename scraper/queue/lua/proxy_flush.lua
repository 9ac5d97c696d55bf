-- PROXY_FLUSH: write batched success counts and latencies of (proxy, domain) pairs in one call.
-- KEYS: -
-- KEYS...: health
-- ARGV: -
-- ARGV...: successes ewma_ms last_success_at
-- REPLY: 1
-- One health key and one ARGV group per pair, in the same order. A success older than the pair's last ban
-- does not reset the ban escalation (consecutive). Proxy health keys carry no hash tag (they are shared by
-- every spider), so in Redis Cluster one call may only flush pairs of one slot.
for j = 1, #KEYS do
  local key, i = KEYS[j], 3 * j - 2
  redis.call('HINCRBY', key, 'successes', ARGV[i])
  redis.call('HSET', key, 'ewma_ms', ARGV[i + 1])
  local last_ban = tonumber(redis.call('HGET', key, 'last_ban') or '0')
  if tonumber(ARGV[i + 2]) > last_ban then redis.call('HSET', key, 'consecutive', 0) end
  redis.call('EXPIRE', key, 7 * 86400)
end
return 1
