-- STAGE_STARTS: move up to n entries of a scrapy-redis start key into this worker's staging list.
-- KEYS: source stage staging ready
-- ARGV: prefix worker now deadline run n kind low
-- REPLY: {run, entry...}: the run the staged entries belong to, then the entries of this worker's
--   staging list (its own left over from a failed pass, a dead worker's adopted list, or newly moved
--   ones); {run} alone when there is nothing to do.
-- COMPUTED: prefix..'stage:'..worker of a dead worker (its id is read from `stage`), whose staging
--   list this worker adopts; within the {spider} hash tag of prefix.
local worker, now, deadline, run = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local n, kind, low = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])

local function push(list)
  for i = 1, #list, 500 do
    redis.call('RPUSH', k.staging, unpack(list, i, math.min(i + 499, #list)))
  end
end

-- 1. this worker's own staging list, left by a pass that could not seed it: again, under its run
local mine = redis.call('LRANGE', k.staging, 0, -1)
if #mine > 0 then
  local cur = redis.call('HGET', k.stage, worker)
  if cur then run = string.match(cur, '^[^|]*|(.*)$') or run end
  redis.call('HSET', k.stage, worker, deadline .. '|' .. run)
  table.insert(mine, 1, run)
  return mine
end

-- 2. the staging list of a worker whose registration expired (it died mid-move): adopt it
local all = redis.call('HGETALL', k.stage)
for i = 1, #all, 2 do
  local w, v = all[i], all[i + 1]
  local dl, r = string.match(v, '^([^|]*)|(.*)$')
  if w ~= worker and (tonumber(dl) or 0) < now then
    local dead = k.prefix .. 'stage:' .. w
    local ents = redis.call('LRANGE', dead, 0, -1)
    redis.call('DEL', dead)
    redis.call('HDEL', k.stage, w)
    if #ents > 0 then
      push(ents)
      redis.call('HSET', k.stage, worker, deadline .. '|' .. r)
      table.insert(ents, 1, r)
      return ents
    end
  end
end

-- 3. new entries, while READY runs low (the start key stays the backlog, as under scrapy-redis)
redis.call('HSET', k.stage, worker, deadline .. '|' .. run)
if redis.call('ZCARD', k.ready) >= low then return {run} end
local got
if kind == 'set' then
  got = redis.call('SPOP', k.source, n)
elseif kind == 'zset' then
  local pairs_ = redis.call('ZPOPMAX', k.source, n)
  got = {}
  for i = 1, #pairs_, 2 do table.insert(got, pairs_[i]) end
else
  got = redis.call('LPOP', k.source, n)
end
if not got or #got == 0 then return {run} end
push(got)
table.insert(got, 1, run)
return got
