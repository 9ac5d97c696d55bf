-- SEED_BULK: the bulk form of SEED (FleetQueue.seed, `fleet seed`), run inside MULTI right after one HSET
--   of every entry's envelope into env.
-- KEYS: env ready seq runs waiting wake seen
-- ARGV: ttl now run
-- ARGV...: id fp prio
-- REPLY: integer: how many entries were enqueued (the rest were in SEEN; their envelopes are deleted)
-- COMPUTED: seen..':'..bucket, the SEEN set's bucket strings (lua/_helpers.lua); within seen's hash tag.
-- Why the envelope JSON stays out of Lua: Lua 5.1 interns every string, hashing only ~32 sampled bytes of
-- a long one, and envelopes that differ in a few bytes (URL, fp, time) collide into long chains: ~9 µs
-- an entry just to pass them in ARGV, vs ~1 µs for an HSET. Leaves the state SEED leaves for the same
-- entries with dont_filter '0': SEEN checked and extended per entry in input order (members stored before
-- the call found 7-byte aligned, as set_add finds them), READY scores from the seq values SEED's INCRs
-- would return, same count, TTL and runs; a duplicate's envelope, just written by the HSET, is deleted
-- again (the one difference: a duplicate whose random id equals a queued entry's, 2^-64 per pair, deletes
-- that entry's envelope). Each SEEN bucket is read and written once per call, and seq, count and TTL once
-- per call, not once per entry; a bucket grows by one APPEND of its new members (lua/_helpers.lua, SEEN/DONE
-- encoding).
local ttl, now, run = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local seen = k.seen
local sub, find = string.sub, string.find
local fresh, nfresh, dups, ndups = {}, 0, {}, 0  -- ARGV indexes of fresh entries, ids of duplicates
if ttl <= 0 then
  -- never with Fleet's config (FLEET_DEDUP_TTL >= 1): each EXPIRE drops SEEN at once, so go entry by entry
  for i = 4, #ARGV, 3 do
    if set_add(seen, ARGV[i+1], ttl) == 1 then
      nfresh = nfresh + 1
      fresh[nfresh] = i
    else
      ndups = ndups + 1
      dups[ndups] = ARGV[i]
    end
  end
else
  local st = set_open(seen)
  local hx = {}
  for c = 0, 255 do hx[string.format('%02x', c)] = string.char(c) end
  -- per bucket: the stored string (false: none), the members added by this call (list, and set)
  local stored, added, members = {}, {}, {}
  for i = 4, #ARGV, 3 do
    local fp = ARGV[i+1]
    local b, s = sub(fp, 1, 3), nil
    local c1, c2, c3, c4 = hx[sub(fp, 4, 5)], hx[sub(fp, 6, 7)], hx[sub(fp, 8, 9)], hx[sub(fp, 10, 11)]
    local c5, c6, c7 = hx[sub(fp, 12, 13)], hx[sub(fp, 14, 15)], hx[sub(fp, 16, 16) .. '0']
    if c7 and c6 and c5 and c4 and c3 and c2 and c1 and #fp == 16 then
      s = c1 .. c2 .. c3 .. c4 .. c5 .. c6 .. c7
    else
      b, s = fpparts(fp)  -- not 16 lowercase hex digits: exactly what set_add does with it
    end
    local cur, mine = stored[b], members[b]
    if cur == nil then
      cur = redis.call('GET', seen .. ':' .. b) or false
      stored[b] = cur
      mine = {}
      members[b] = mine
      added[b] = {}
    end
    local dup = mine[s] or false
    if not dup and cur then
      -- a member stored before this call, found as set_add finds it (7-byte aligned)
      local j = 1
      while true do
        local p = find(cur, s, j, true)
        if not p then break end
        if (p - 1) % 7 == 0 then dup = true; break end
        j = p + 1
      end
    end
    if dup then
      ndups = ndups + 1
      dups[ndups] = ARGV[i]
    else
      mine[s] = true
      local list = added[b]
      list[#list + 1] = s
      nfresh = nfresh + 1
      fresh[nfresh] = i
    end
  end
  if nfresh > 0 then
    local es = set_deadline(seen, st, ttl)
    for b, list in pairs(added) do
      if list[1] then bucket_write(seen .. ':' .. b, table.concat(list), not stored[b], es) end
    end
    redis.call('HINCRBY', seen, 'count', nfresh)
    if not es then set_drop(seen, st) end
  end
end
-- READY scores as ready_score gives them, from the seq values its INCRs would have returned
local seq = tonumber(redis.call('GET', k.seq) or '0')
local scored, n = {}, 0
for q = 1, nfresh do
  local i = fresh[q]
  scored[n + 1] = ready_at(ARGV[i+2], seq + q)
  scored[n + 2] = ARGV[i]
  n = n + 2
  if n >= 1000 then redis.call('ZADD', k.ready, unpack(scored, 1, n)); n = 0 end
end
if n > 0 then redis.call('ZADD', k.ready, unpack(scored, 1, n)) end
if nfresh > 0 then redis.call('INCRBY', k.seq, nfresh) end
for q = 1, ndups, 1000 do
  redis.call('HDEL', k.env, unpack(dups, q, math.min(q + 999, ndups)))
end
redis.call('ZADD', k.runs, 'NX', now, run)
if nfresh > 0 then wake(k, nfresh) end
return nfresh
