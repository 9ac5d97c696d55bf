-- The floor of a COMMIT (tests/bench/costs.py --floor): each commit records its DONE, enqueues its one
-- child unless SEEN, and acknowledges its lease; only those writes, batched.
-- KEYS: ready env inflight lease seq seen done
-- ARGV...: id token fp child_id child_json child_fp (fingerprints packed: 3-char bucket, 7-byte member)
-- REPLY: commits acknowledged
-- Not done here, and done by Fleet's COMMIT: the DONE check of a claimed child, claims, breaker windows,
-- cancelled runs, redirect hops, dont_filter, strict acks, the sets' counts and deadlines, wake-ups.
local n = #ARGV / 6
local ids, sk = {}, {}
for e = 1, n do
  local b = (e - 1) * 6
  ids[e] = ARGV[b + 1]
  sk[e] = KEYS[6] .. ':' .. string.sub(ARGV[b + 6], 1, 3)
end
local toks = redis.call('HMGET', KEYS[4], unpack(ids))
local seen = redis.call('MGET', unpack(sk))
local top = redis.call('INCRBY', KEYS[5], n)
local envs, ready, gone = {}, {}, {}
local added = {}  -- bucket key -> the members this call appended (a child queued twice in one batch)
for e = 1, n do
  local b = (e - 1) * 6
  if toks[e] == ARGV[b + 2] then
    local fp, cfp = ARGV[b + 3], ARGV[b + 6]
    redis.call('APPEND', KEYS[7] .. ':' .. string.sub(fp, 1, 3), string.sub(fp, 4))
    local s, cur, a = string.sub(cfp, 4), seen[e], added[sk[e]]
    if not ((cur and string.find(cur, s, 1, true)) or (a and string.find(a, s, 1, true))) then
      redis.call('APPEND', sk[e], s)
      added[sk[e]] = (a or '') .. s
      envs[#envs + 1], envs[#envs + 2] = ARGV[b + 4], ARGV[b + 5]
      ready[#ready + 1], ready[#ready + 2] = string.format('%d', e - top), ARGV[b + 4]
    end
    gone[#gone + 1] = ids[e]
  end
end
if #envs > 0 then
  redis.call('HSET', KEYS[2], unpack(envs))
  redis.call('ZADD', KEYS[1], unpack(ready))
end
if #gone > 0 then
  redis.call('HDEL', KEYS[2], unpack(gone))
  redis.call('ZREM', KEYS[3], unpack(gone))
  redis.call('HDEL', KEYS[4], unpack(gone))
end
return #gone
