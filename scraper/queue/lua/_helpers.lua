-- Shared helpers. Not a script: the loader (scraper/lua.py) prepends to each script only the helpers its
-- body calls (and the helpers those call), in this file's order, after binding the script's fixed KEYS
-- to the table ``k`` by the names of its header (k.ready = the KEYS entry named ready, and so on).
-- k.prefix is ARGV's ``prefix`` (the spider's "fleet:{spider}:"), set only for scripts that must build
-- a key they cannot be given in advance (a domain or run read inside the script); every such key keeps
-- the {spider} hash tag, so it lives in the same cluster slot as the declared ones.
--
-- SEEN/DONE encoding: per (spider, run) a hash ``key`` (fleet:{spider}:seen:RUN, the key a script is
-- given) with the fields ``count`` (how many members) and ``exp`` (the set's deadline, Unix seconds),
-- and up to 4,096 string keys ``key:bbb``, one per value of the first 12 bits of the 64-bit fingerprint
-- (3 hex chars), each the concatenation of the remaining 52 bits (7 bytes) of every member of that
-- bucket. Why strings grown by APPEND: scripts are effects-replicated, so the AOF and the replicas get
-- the APPEND of 7 bytes, never the bucket, and the bytes written per URL stay flat however large the run
-- grows (the previous encoding, the buckets as fields of the hash, rewrote a whole bucket per add: ~0.9 KB
-- per URL at 1M URLs). About 7 bytes per URL at 1M URLs plus ~100 bytes per bucket key; exact (no false
-- positives beyond 64-bit collisions). All keys of a set expire together at ``exp`` (EXPIREAT), moved to
-- now + ttl when an add finds less than 7/8 of ttl left: a set lives 7/8 ttl to ttl after its last add,
-- and the EXPIREATs cost one pass over the buckets per ttl/8 instead of one write per add.
-- A set still in the previous encoding (seeded before the upgrade) is converted at its first use by any
-- script (set_open), members and TTL kept: a half-done run goes on without fetching anything twice.

-- Redis's clock, read once per script call (a call lasts microseconds; SEEN/DONE and wake both need it);
-- NOWS: the same as a string, for redis.call (Redis turns a number argument into text with snprintf's %.17g,
-- which cost a LEASE more instructions than its commands: issue #18)
local NOW, NOWS = nil, nil
local function server_now()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
    NOWS = t[1] .. '.' .. string.rep('0', 6 - string.len(t[2])) .. t[2]
  end
  return NOW, NOWS
end

-- A write kept out of the AOF's and the replicas' write stream (redis.set_repl): WAITING's (who waits for
-- news of work) and a lease's (IN-FLIGHT's deadlines, LEASE's tokens; see unready). Why: WAITING's entries
-- live 2-3 s and only steer wake-ups, and a lease lives seconds to minutes; on a chain of pages each page
-- listed a worker and took it out again (~150 of the AOF's bytes per page), and granted and ended a lease
-- (another ~155: issue #18). What a restart or a failover costs: what a snapshot held of WAITING is stale,
-- expired by its scores (readers check them), so a waiting worker finds new work at its next idle poll
-- (<= 0.6 s), which lists it again; for leases, see unready. Should a server refuse set_repl, the write goes
-- out as any other. quiet and loud bracket several such writes in a row (one switch each way).
local function quiet()
  return pcall(redis.set_repl, redis.REPL_NONE)
end

local function loud(q)
  if q then redis.set_repl(redis.REPL_ALL) end
end

local function unlogged(...)
  local q = quiet()
  local reply = redis.call(...)
  loud(q)
  return reply
end

-- IN-FLIGHT and LEASE in Redis's hash-table/skip-list encodings. Why: Redis keeps a sorted set of up to
-- 128 members, and a hash of up to 512 fields, as one packed list, where finding a member is a scan of the
-- whole list; a queue working under a few hundred leases (one worker, a small fleet) paid that scan at
-- every grant, ack and lease check: ~20% of Redis's CPU per page (issue #18). A member or value longer than
-- 64 bytes moves a set to the other encoding, which it keeps from then on (through RDB and AOF loads too).
-- So LEASE, before it grants, makes sure of the mark (encoding_mark): a member of IN-FLIGHT at score +inf (never due: MAINTAIN
-- reaps up to now; Fleet counts leases with ZCOUNT -inf (+inf: keys.LEASED) and the value of LEASE's field
-- '~' (no lease id is '~'; only ids are ever read there). NX: written once, no AOF bytes after that.
-- LEASE when READY is empty (a worker about to wait), RELEASE (a worker stopping) and MAINTAIN (the
-- keepers' beat) take the mark out of an IN-FLIGHT it is alone in: a drained or stopped spider's IN-FLIGHT
-- is empty for every reader, including an earlier version's ZCARD (its idle check). (Not at every ack: a
-- one-worker chain would then write the mark and take it out again at every page.) Only workers killed
-- outright leave it, until this version's next LEASE or MAINTAIN; before going back to an earlier
-- version: ZREMRANGEBYSCORE fleet:{spider}:inflight +inf +inf (docs/architecture.md). READY gets the mark only
-- for the length of a call (ready_big).
local function encoding_mark()
  return '~ keeps this key out of the packed-list encoding: a scan at every use (Fleet, issue #18) ~'
end

-- Before m writes of members to READY (m > 2): READY in the skip-list encoding, where a ZADD or ZREM finds its
-- member through a hash, instead of the packed list (up to 128 entries), which each of them scans, so a batch
-- of m made a new READY in m^2 / 2 steps (issue #18: COMMIT writes READY per child and, with unready, per
-- ack). The mark (encoding_mark) goes in first, unlogged, and ready_done takes it out at once: nobody reads
-- it, and READY keeps the encoding while it exists. Returns whether the mark went in.
local function ready_big(k, m)
  if m <= 2 or redis.call('OBJECT', 'ENCODING', k.ready) == 'skiplist' then return false end
  unlogged('ZADD', k.ready, '+inf', encoding_mark())
  return true
end

local function ready_done(k, marked)
  if marked then unlogged('ZREM', k.ready, encoding_mark()) end
end

-- Leases are volatile: LEASE takes a granted entry out of READY unlogged, and its IN-FLIGHT deadline and
-- LEASE field (token, deliveries) are written unlogged, so the AOF and the replicas keep the entry in READY
-- while it is leased. Whatever ends a lease other than back to READY (the ack, a retry's move to DELAYED,
-- the DLQ, a park, a cancel) takes the entry out of READY in their view with unready: an unlogged ZADD
-- puts it back in the live READY for the logged ZREM to take out (Redis logs a write only when it changed
-- something, so a ZREM of what the live READY no longer holds would not reach them). What a restart from
-- the AOF or a failover costs: every request in flight is in READY again, its deliveries counted again
-- from 1 (its A/B attempts and lost deliveries are in its envelope: kept); a worker that still holds one
-- and commits is answered not acknowledged, its DONE recorded, and LEASE drops the entry as DONE (or hands
-- it out again if asked first: at least once). docs/architecture.md, Volatile leases.
-- A snapshot (RDB, AOF rewrite) does hold the live leases, at its deadlines (HEARTBEAT's are unlogged): one
-- past it is reaped at once, one acknowledged since is dropped by the reaper (its envelope is gone), and a
-- LEASE field whose entry ended otherwise since by MAINTAIN's lease_sweep. A request whose redirect hops
-- are recorded keeps counting as delivered (dlv_old).
local function unready(k, ids, j, last)
  local zs, n = {}, 0
  for q = j, last do
    zs[n + 1], zs[n + 2] = '-inf', ids[q]
    n = n + 2
  end
  local marked = ready_big(k, last - j + 1)
  unlogged('ZADD', k.ready, unpack(zs))
  redis.call('ZREM', k.ready, unpack(ids, j, last))
  ready_done(k, marked)
end

-- hex to bytes through a table of the pairs met so far in this call (gsub looks each pair up; a pair is
-- converted once per call instead of once per occurrence, without a closure per call of hex2bin)
local HX = nil  -- made at the first call of hex2bin: most calls never need it (fpparts' arithmetic path)
local function hex2bin(h)
  if not HX then
    HX = setmetatable({}, {__index = function(t, cc)
      local v = string.char(tonumber(cc, 16))
      t[cc] = v
      return v
    end})
  end
  return (string.gsub(h, '..', HX))
end

-- bucket: the first 12 bits as 3 hex chars; member: the other 52 bits packed in 7 bytes. A fingerprint of
-- 16 hex digits (every one Fleet writes) is unpacked by arithmetic on two 24-bit numbers and a nibble: the
-- pairwise gsub of hex2bin was ~13% of Redis's instructions in a crawl (issue #18); the bytes by division
-- with remainders, not math.floor (each call of a C function costs a script ~1k instructions). Anything
-- else goes the general way, as before. COMMIT is sent its fingerprints already in this form (fpsplit).
-- fphex: the arithmetic alone, for a caller that has checked the 16 hex digits itself (LEASE's done_key).
local function fphex(fp)
  local sub = string.sub
  local x, y, z = tonumber(sub(fp, 4, 9), 16), tonumber(sub(fp, 10, 15), 16), tonumber(sub(fp, 16, 16), 16)
  local x1, y1 = x % 65536, y % 65536
  return sub(fp, 1, 3), string.char((x - x1) / 65536, (x1 - x1 % 256) / 256, x1 % 256,
                                    (y - y1) / 65536, (y1 - y1 % 256) / 256, y1 % 256, z * 16)
end

local function fpparts(fp)
  if string.find(fp, '^%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x$') then return fphex(fp) end
  return string.sub(fp, 1, 3), hex2bin(string.sub(fp, 4, 16) .. '0')
end

-- a fingerprint as the Python side packs it for COMMIT (scraper.queue.seenset.packed: bucket and member, 10
-- bytes, converted once in Python instead of in every script call: issue #18), or as hex (fpparts)
local function fpsplit(x)
  if string.len(x) == 10 then return string.sub(x, 1, 3), string.sub(x, 4) end
  return fpparts(x)
end

-- whether member s is in bucket string cur (7-byte aligned)
local function bucket_has(cur, s)
  local i = 1
  while true do
    local p = string.find(cur, s, i, true)
    if not p then return false end
    if (p - 1) % 7 == 0 then return true end
    i = p + 1
  end
end

-- the previous encoding (buckets as 3-char fields of the hash) to the current one, TTL kept
local function set_migrate(key)
  local pttl = redis.call('PTTL', key)
  local d = 0
  if pttl > 0 then d = math.ceil(server_now() + pttl / 1000) end
  local all = redis.call('HGETALL', key)
  local drop = {}
  for i = 1, #all, 2 do
    local f = all[i]
    if string.len(f) == 3 and f ~= 'exp' then
      local bk = key .. ':' .. f
      redis.call('APPEND', bk, all[i + 1])
      if d > 0 then redis.call('EXPIREAT', bk, d) end
      drop[#drop + 1] = f
      if #drop >= 500 then
        redis.call('HDEL', key, unpack(drop))
        drop = {}
      end
    end
  end
  if #drop > 0 then redis.call('HDEL', key, unpack(drop)) end
  redis.call('HSET', key, 'exp', d)  -- keeps the key's TTL
end

-- once per set per script call: convert a set of the previous encoding (a hash without exp); returns the
-- set's state for this call: {old = whether it existed, exp = its deadline (0: none)}. One HGET when the
-- set exists (the usual case). A worker of the previous version adding to a converted set would write a
-- bucket field nobody reads: stop a spider's old workers before starting upgraded ones.
local SETS = {}
local function set_open(key)
  local st = SETS[key]
  if st then return st end
  local d = redis.call('HGET', key, 'exp')
  if not d and redis.call('EXISTS', key) == 1 then
    set_migrate(key)
    d = redis.call('HGET', key, 'exp')
  end
  st = {old = d and true or false, exp = tonumber(d) or 0}
  SETS[key] = st
  return st
end

local function set_has(key, fp)
  set_open(key)
  local b, s = fpparts(fp)
  local cur = redis.call('GET', key .. ':' .. b)
  if not cur then return false end
  return bucket_has(cur, s)
end

-- every key of the set gone (only with a TTL <= 0, which Fleet's settings refuse: what EXPIRE did)
local function set_drop(key, st)
  redis.call('DEL', key)
  for i = 0, 4095 do redis.call('DEL', key .. ':' .. string.format('%03x', i)) end
  st.old, st.exp = false, 0
end

-- before adds to key: its deadline at least 7/8 ttl ahead (every existing bucket moved along when it
-- moves); returns the deadline as text, for the buckets the adds create (nil for ttl <= 0: the set is
-- dropped after the adds, set_drop)
local function set_deadline(key, st, ttl)
  if ttl <= 0 then return nil end
  local now = server_now()
  if now + ttl * 7 / 8 > st.exp then
    local d = math.ceil(now + ttl)
    st.exp = d
    local ds = string.format('%d', d)
    redis.call('HSET', key, 'exp', ds)
    redis.call('EXPIREAT', key, ds)
    if st.old then
      for i = 0, 4095 do redis.call('EXPIREAT', key .. ':' .. string.format('%03x', i), ds) end
    end
    return ds
  end
  return string.format('%d', st.exp)
end

-- a bucket's new members: a bucket that did not exist is made with the set's deadline in one SET ... EXAT
-- (an APPEND and an EXPIREAT were two commands and ~110 AOF bytes, and in a run of less than a few URLs
-- per bucket, ~16k, most adds make a bucket: issue #18); an existing one grows by APPEND
local function bucket_write(bk, bytes, new, es)
  if new and es then
    redis.call('SET', bk, bytes, 'EXAT', es)
  else
    redis.call('APPEND', bk, bytes)
  end
end

-- returns 1 when added, 0 when already present
local function set_add(key, fp, ttl)
  local st = set_open(key)
  local b, s = fpparts(fp)
  local bk = key .. ':' .. b
  local cur = redis.call('GET', bk)
  if cur and bucket_has(cur, s) then return 0 end
  local es = set_deadline(key, st, ttl)
  bucket_write(bk, s, not cur, es)
  redis.call('HINCRBY', key, 'count', 1)
  if not es then set_drop(key, st) end
  st.old = true
  return 1
end

-- The batched form of set_has/set_add for scripts that touch many members per call (LEASE, COMMIT):
-- a set's buckets are read once per call (sc_load: one MGET for a whole batch), members are checked and
-- added in this call's memory, in call order, exactly as set_has/set_add would find them, and the adds
-- reach Redis at the end (sc_flush: one APPEND per bucket written, one HINCRBY and the TTL per set). Why:
-- each redis.call costs ~1-2 µs of Redis CPU beyond the command itself, and a page used to spend about a
-- dozen of them on SEEN/DONE alone (issue #18). A script that calls sc_add must call sc_flush before it
-- returns (the loader checks it); set_has/set_add on a set this call caches would miss its pending adds,
-- so a script uses one family or the other.
local SC = {}
local function sc_get(key)
  local c = SC[key]
  if not c then
    c = {st = set_open(key), cur = {}, add = false, n = 0, ttl = 0}  -- add: made at the first add
    SC[key] = c
  end
  return c
end

-- read the buckets of fps (a list) not yet known to this call, one MGET per 500 buckets
local function sc_load(key, fps)
  local c = sc_get(key)
  local cur, want = c.cur, {}
  for _, fp in ipairs(fps) do
    local bk = key .. ':' .. string.sub(fp, 1, 3)
    if cur[bk] == nil then
      cur[bk] = false  -- asked for below (an absent bucket stays false)
      want[#want + 1] = bk
    end
  end
  for j = 1, #want, 500 do
    local last = math.min(j + 499, #want)
    local got = redis.call('MGET', unpack(want, j, last))
    for q = j, last do cur[want[q]] = got[q - j + 1] or false end
  end
end

-- the bucket key of (b, s) (fpparts, fpsplit) in key's cache, its member bytes and its current contents
-- (false: none)
local function sc_bucket(key, b, s)
  local c = sc_get(key)
  local bk = key .. ':' .. b
  local cur = c.cur[bk]
  if cur == nil then
    cur = redis.call('GET', bk) or false
    c.cur[bk] = cur
  end
  return c, bk, s, cur
end

local function sc_has(key, b, s)
  local c, bk, s, cur = sc_bucket(key, b, s)
  local a = c.add and c.add[bk]
  return (a and bucket_has(a, s)) or (cur and bucket_has(cur, s)) or false
end

-- 1 when added (pending until sc_flush), 0 when already present. A bucket's pending members are their own
-- string (c.add[bk], what the APPEND will send), not a longer copy of the bucket: a call allocates little
-- (Lua's garbage collector costs Redis CPU in proportion to what a script allocates).
local function sc_add(key, ttl, b, s)
  local c, bk, s, cur = sc_bucket(key, b, s)
  local adds = c.add
  local a = adds and adds[bk]
  if (a and bucket_has(a, s)) or (cur and bucket_has(cur, s)) then return 0 end
  if not adds then
    adds = {}
    c.add = adds
  end
  adds[bk] = (a or '') .. s
  c.n = c.n + 1
  c.ttl = ttl
  return 1
end

-- write every pending add: the set's deadline (set_deadline), per bucket one write (bucket_write), per set
-- one HINCRBY (as set_add does)
local function sc_flush()
  for key, c in pairs(SC) do
    if c.n > 0 then
      local es = set_deadline(key, c.st, c.ttl)
      for bk, a in pairs(c.add) do
        local cur = c.cur[bk]
        bucket_write(bk, a, not cur, es)
        -- unknown to this call again: read from Redis should the call ask (none does after its flush); a copy
        -- of the bucket with its adds was a copy of ~1.7 KB per add at 1M URLs in a run
        c.cur[bk] = nil
      end
      redis.call('HINCRBY', key, 'count', string.format('%d', c.n))
      if not es then set_drop(key, c.st) end
      c.st.old = true
      c.add, c.n = false, 0
    end
  end
end

-- The domain of an envelope without "domain": its URL's host, when the URL is http(s)://, then letters,
-- digits, dots and hyphens up to '/', ':', '?', '#' or the end, lowercased; else nil (no domain). Python
-- writes "domain" exactly when this rule would not give Envelope.domain (envelope.py: rule_domain, the
-- same rule), which saves 20-30 bytes of every queued request in memory, AOF and replicas (issue #18).
local function url_domain(url)
  local h, p = string.match(url, '^https?://([%w%.%-]+)()')
  if not h then return nil end
  local c = string.byte(url, p)
  -- '/' 47, ':' 58, '?' 63, '#' 35, or the end (nil)
  if c and c ~= 47 and c ~= 58 and c ~= 63 and c ~= 35 then return nil end
  return string.lower(h)
end

-- run, fp, domain of an envelope as cjson reads them: each a string or nil (absent, not a string, or the
-- entry is not JSON, or not an object or array: what cjson decodes to a table); an absent "domain" is
-- the URL's (url_domain)
local function env_cjson(json)
  local ok, e = pcall(cjson.decode, json)
  if not ok or type(e) ~= 'table' then return nil, nil, nil end
  local run, fp, domain, url = e['run'], e['fp'], e['domain'], e['url']
  if type(run) ~= 'string' then run = nil end
  if type(fp) ~= 'string' then fp = nil end
  if domain == nil and type(url) == 'string' then
    domain = url_domain(url)
  elseif type(domain) ~= 'string' then
    domain = nil
  end
  return run, fp, domain
end

-- What LEASE reads of an envelope: run, fp, domain as env_cjson gives them, and whether the patterns read
-- them. The JSON as Envelope.dumps writes it (envelope.py: "lost" first when set, then "v", "url", "spider",
-- "run", "fp", ..., "domain" last, no spaces) is read by plain finds at fixed tokens instead of being
-- decoded whole (cjson builds a table and some twenty strings: ~5 µs an entry, issue #18; a pattern walking
-- the URL character by character cost ~1 µs, the finds ~0.3); anything else (an escape in run or fp, a
-- backslash before the quotes around the spider, another layout, "run" or "fp" again after the fp or a \u
-- escape there (cjson keeps the last of a repeated key), another writer) is decoded with cjson. The finds do
-- not prove the rest of the text is JSON (nor JSON cjson takes: a lone surrogate escape in the URL, nesting
-- deeper than cjson's limit): a caller about to drop an entry unfetched on what they read (DONE, a
-- cancelled run) asks env_cjson first (LEASE does); the worker dead-letters what it cannot read.
local function env_head(json)
  local find, byte = string.find, string.byte
  if byte(json, 1) ~= 123 then return env_cjson(json) end  -- '{'
  local at = 2
  if byte(json, 3) == 108 then at = string.match(json, '^{"lost":%d+,()') or 2 end  -- '{"l'
  -- Plain finds (memchr, not a pattern walked character by character over the URL): in JSON a quote
  -- inside a string is escaped, so '","spider":"' and '","run":"' past the URL's start are the tokens
  -- after the URL and the spider, unless a backslash precedes them (an escaped quote: not Fleet's JSON,
  -- left to cjson); the spider holds no quote (its next quote is the run's token)
  if find(json, '"v":1,"url":"', at, true) == at then
    local r0 = find(json, '","run":"', at + 13, true)
    local q = r0 and find(json, '","spider":"', at + 13, true)
    -- the URL's first quote is the one before "spider" (else another key follows the URL, and these
    -- tokens may be a nested object's: found by review), and the spider's first quote the run's
    if q and q < r0 and byte(json, q - 1) ~= 92 and byte(json, r0 - 1) ~= 92
       and find(json, '"', at + 13, true) == q and find(json, '"', q + 12, true) == r0 then
      local run, fp, after = string.match(json, '^","run":"([^"\\]*)","fp":"([^"\\]*)"()', r0)
      -- the fp ends the object, or another key follows it
      if run and not (byte(json, after) == 44 or (byte(json, after) == 125 and after == #json)) then run = nil end
      -- after the fp, no other "run" or "fp" (spelt plainly, or with an escape, or with space before its ':')
      if run and not find(json, '"run"', after, true) and not find(json, '"fp"', after, true)
         and not find(json, '\\u', after, true) then
        local n = #json
        local p = find(json, ',"domain":"', n > 300 and n - 300 or 1, true)
        while p do
          local domain = string.match(json, '^,"domain":"([^"\\]*)"}$', p)
          if domain then return run, fp, domain, true end
          p = find(json, ',"domain":"', p + 1, true)
        end
        -- no "domain" at all after the fp (Fleet leaves it out when the URL gives it): the URL's, read from
        -- its JSON text when that holds no escape (a backslash: cjson decodes it)
        -- (nor a second "url": cjson would keep the last)
        if not find(json, '"domain"', after, true) and not find(json, '"url"', after, true) then
          local url = string.sub(json, at + 13, q - 1)
          if not find(url, '\\', 1, true) then return run, fp, url_domain(url), true end
        end
      end
    end
  end
  local r, f, d = env_cjson(json)
  return r, f, d, false
end

-- READY's score of an entry of priority prio numbered seq: newest first within a priority (LIFO, like
-- Scrapy's default queue), so pagination chains and redelivered work move on at once instead of waiting
-- behind the whole backlog. Priority 0, the usual one, as %d text (what Redis makes of a Lua number is
-- snprintf's slower %.17g); the same value either way.
local function ready_at(prio, seq)
  prio = tonumber(prio)
  if prio == 0 then return string.format('%d', -seq) end
  return -prio * 1e12 - seq
end

local function ready_score(k, prio)
  return ready_at(prio, redis.call('INCR', k.seq))
end

local function prio_of(json)
  local ok, env = pcall(cjson.decode, json)
  if ok and type(env) == 'table' and tonumber(env['priority']) then
    return tonumber(env['priority'])
  end
  return 0
end

-- put a known entry back in READY as the newest of its priority; false when its envelope is gone
local function to_ready(k, id)
  local json = redis.call('HGET', k.env, id)
  if not json then return false end
  redis.call('ZADD', k.ready, ready_score(k, prio_of(json)), id)
  return true
end

-- enqueue one envelope unless in SEEN (dont_filter skips the check); returns 1 if enqueued
local function enqueue(k, seen, ttl, id, json, fp, prio, dont_filter)
  if dont_filter ~= '1' then
    if set_add(seen, fp, ttl) == 0 then return 0 end
  elseif redis.call('HEXISTS', k.env, id) == 1 then
    -- ids are fresh per discovery: a known one is this very child sent again (a commit retried after
    -- its reply was lost), maybe leased by now; queueing it again would fetch it twice
    return 0
  else
    -- not a filter, only the run's count: DONE will hold this fp, so SEEN must too, or seen < done and
    -- the run's manifest would never reconcile (its fp is a start fingerprint: unique to the request)
    set_add(seen, fp, ttl)
  end
  redis.call('HSET', k.env, id, json)
  redis.call('ZADD', k.ready, ready_score(k, prio), id)
  return 1
end

local function owns(k, id, token)
  return redis.call('HGET', k.lease, id) == token
end

-- An entry's deliveries live in LEASE's field of it (issue #18: a separate counter hash cost a write at
-- every grant and a delete at every ack): while leased, the token (worker#n#nonce); once a lease ends
-- with the entry kept (reaped, released, deferred, parked) the field becomes '#n', which no token equals
-- (owns) and the next grant counts on; the entry's end deletes the field. deliveries: n of a field.
local function deliveries(v)
  if not v then return 0 end
  return tonumber(string.match(v, '#(%d+)#[^#]*$') or string.match(v, '^#(%d+)$')) or 0
end

-- dlv: deliveries that must survive a restart or a failover, which lose LEASE's fields (a lease is volatile:
-- unready). A grant with no lease field reads the count there, and an entry's end deletes its field (an HDEL
-- that finds nothing is not logged). Written by a children COMMIT that records a request's redirect hops in
-- SEEN before its DONE (dlv_mark): only a request's first delivery checks its hops (scraper/worker/
-- redirects.py), and a later one would find its own hop SEEN and drop its page, so such a request's next
-- delivery must count as the second at least. Rare (a redirected page with children). The versions before
-- 2026-12-07 counted every delivery here: their fields are read the same way. One EXISTS per call.
local DLV_OLD = nil
local function dlv_old(k)
  if DLV_OLD == nil then DLV_OLD = redis.call('EXISTS', k.dlv) == 1 end
  return DLV_OLD
end

local function dlv_mark(k, id)
  redis.call('HSETNX', k.dlv, id, '1')
  DLV_OLD = true
end

-- (LEASE's fields are written unlogged: unready says why)
local function lease_end(k, id, token)
  local d = deliveries(token or redis.call('HGET', k.lease, id))
  if d > 0 then
    unlogged('HSET', k.lease, id, '#' .. d)
  else
    unlogged('HDEL', k.lease, id)
  end
end

-- MAINTAIN's sweep of LEASE, n fields a call (HSCAN, its cursor in lsweep, unlogged): a field whose entry
-- has no envelope and no IN-FLIGHT deadline is dropped, logged. Why: a lease's writes are unlogged (unready),
-- so a restart from an AOF with a snapshot base (or a failover to a replica that synced from one) brings
-- back the fields that snapshot held, and the acks since deleted theirs unlogged: without the sweep each
-- such restart would leave those fields for good. (Versions before 2026-12-07 left none.)
local function lease_sweep(k, n)
  local r = redis.call('HSCAN', k.lease, redis.call('GET', k.lsweep) or '0', 'COUNT', string.format('%d', n))
  local ids = {}
  for i = 1, #r[2], 2 do
    if r[2][i] ~= '~' then ids[#ids + 1] = r[2][i] end
  end
  if #ids > 0 then
    local envs, drop = redis.call('HMGET', k.env, unpack(ids)), {}
    for i, id in ipairs(ids) do
      if not envs[i] and not redis.call('ZSCORE', k.inflight, id) then drop[#drop + 1] = id end
    end
    if #drop > 0 then redis.call('HDEL', k.lease, unpack(drop)) end
  end
  if r[1] == '0' then unlogged('DEL', k.lsweep) else unlogged('SET', k.lsweep, r[1]) end
end

-- breaker params: W (window), minev, rate, cbase, ccap (cooldown base/cap seconds)
local function release_parked(k, domain)
  local pk = k.prefix .. 'parked:' .. domain
  local ids = redis.call('ZRANGE', pk, 0, -1)
  local n = 0
  for _, id in ipairs(ids) do
    if to_ready(k, id) then n = n + 1 end
  end
  redis.call('DEL', pk)
  redis.call('SREM', k.parkdom, domain)
  return n
end

-- a leased entry to its domain's PARKED (out of READY for the AOF and the replicas too: unready)
local function park(k, domain, id, now)
  unready(k, {id}, 1, 1)
  redis.call('ZREM', k.inflight, id)
  lease_end(k, id)
  redis.call('ZADD', k.prefix .. 'parked:' .. domain, now, id)
  redis.call('SADD', k.parkdom, domain)
end

local function breaker_open(k, bk, domain, now, cbase, ccap)
  local trips = redis.call('HINCRBY', bk, 'trips', 1)
  local cool = math.min(ccap, cbase * 2 ^ (trips - 1))
  redis.call('HSET', bk, 'state', 'open', 'opened_at', now, 'open_until', now + cool, 'cooldown', cool)
  redis.call('HDEL', bk, 'probe', 'probe_until')
  redis.call('HSET', k.brk, domain, 'open|' .. (now + cool))
end

local function breaker_close(k, bk, domain, now)
  redis.call('HSET', bk, 'state', 'closed', 'window', '', 'closed_at', now, 'trips', 0)
  redis.call('HDEL', bk, 'probe', 'probe_until', 'open_until')
  redis.call('HDEL', k.brk, domain)
  return release_parked(k, domain)
end

-- a breaker's window (its last W outcomes) after one more, whether that many C outcomes (at least minev, at
-- least rate of the window) trip a closed breaker, and how many C it holds: breaker_record and its batched
-- form share it. nc: the C in win (nil: counted here, once; breaker_note carries it from one outcome to the
-- next instead of counting the whole window at each, issue #18)
local function window_after(win, outcome, W, minev, rate, nc)
  if not nc then
    local _, c = string.gsub(win, 'C', '')
    nc = c
  end
  if outcome == 'C' then nc = nc + 1 end
  win = win .. outcome
  local n = #win
  if n > W then  -- the oldest leave: one at a time, unless W shrank since the window was written
    local drop = n - W
    if drop == 1 then
      if string.byte(win, 1) == 67 then nc = nc - 1 end  -- 'C'
    else
      local _, c = string.gsub(string.sub(win, 1, drop), 'C', '')
      nc = nc - c
    end
    win = string.sub(win, drop + 1)
    n = W
  end
  return win, nc >= minev and nc / n >= rate, nc
end

-- outcome: 'C' (drift) or 'o' (item callback extracted fine) or 'n' (navigation page: no verdict)
-- returns event: '', 'opened', 'closed', 'reopened'
local function breaker_record(k, domain, outcome, id, now, W, minev, rate, cbase, ccap)
  local bk = k.prefix .. 'breaker:' .. domain
  local st = redis.call('HGET', bk, 'state') or 'closed'
  if st == 'half_open' then
    if redis.call('HGET', bk, 'probe') == id then
      if outcome == 'o' then
        return 'closed', breaker_close(k, bk, domain, now)  -- and how many parked it released
      elseif outcome == 'C' then
        breaker_open(k, bk, domain, now, cbase, ccap)
        return 'reopened'
      else
        redis.call('HDEL', bk, 'probe', 'probe_until')  -- a navigation page proves nothing
        redis.call('HSET', k.brk, domain, 'half|0')
      end
    end
    return ''
  end
  if outcome == 'n' then return '' end
  local win, trips = window_after(redis.call('HGET', bk, 'window') or '', outcome, W, minev, rate)
  redis.call('HSET', bk, 'window', win)
  if st == 'closed' and trips then
    breaker_open(k, bk, domain, now, cbase, ccap)
    return 'opened'
  end
  return ''
end

-- breaker_record for a batch (COMMIT): while a domain's breaker is closed, its window is read once per
-- call, extended in memory and written once by breaker_flush; any other state, and the trip itself, go
-- through breaker_record / breaker_open as before (the cached window written first), and the domain is
-- read afresh at its next outcome. Same events, same windows as one breaker_record per commit. before():
-- called ahead of breaker_record, which may close the breaker and queue its parked requests in READY, so
-- the caller writes its pending READY entries first and READY's order is what one call per commit gives.
local BRC = {}
local function breaker_note(k, domain, outcome, id, now, W, minev, rate, cbase, ccap, before)
  local c = BRC[domain]
  local bk = k.prefix .. 'breaker:' .. domain
  if c == nil then
    local v = redis.call('HMGET', bk, 'state', 'window')
    if (v[1] or 'closed') ~= 'closed' then
      before()  -- the caller's pending writes go first: closing the breaker queues its parked requests
      return breaker_record(k, domain, outcome, id, now, W, minev, rate, cbase, ccap)
    end
    c = {win = v[2] or '', dirty = false, nc = nil}
    BRC[domain] = c
  end
  if outcome == 'n' then return '' end
  local win, trips, nc = window_after(c.win, outcome, W, minev, rate, c.nc)
  c.win, c.dirty, c.nc = win, true, nc
  if trips then
    redis.call('HSET', bk, 'window', win)
    BRC[domain] = nil
    breaker_open(k, bk, domain, now, cbase, ccap)
    return 'opened'
  end
  return ''
end

-- the windows breaker_note changed, written once each
local function breaker_flush(k)
  for domain, c in pairs(BRC) do
    if c.dirty then redis.call('HSET', k.prefix .. 'breaker:' .. domain, 'window', c.win) end
  end
  BRC = {}
end

-- at lease time: 'go' (lease it), 'park', or 'probe' (lease it as the one half-open probe)
local function breaker_gate(k, domain, id, now, lease)
  local b = redis.call('HGET', k.brk, domain)
  if not b then return 'go' end
  local sep = string.find(b, '|', 1, true)
  local st, t = string.sub(b, 1, sep - 1), tonumber(string.sub(b, sep + 1))
  local bk = k.prefix .. 'breaker:' .. domain
  if st == 'half' then
    if redis.call('HGET', bk, 'probe') == id then return 'go' end
    if t > now then return 'park' end
  elseif now < t then
    return 'park'
  end
  -- cooldown over (or the probe was lost): this request becomes the single fleet-wide probe
  redis.call('HSET', bk, 'state', 'half_open', 'probe', id, 'probe_until', now + lease * 2)
  redis.call('HSET', k.brk, domain, 'half|' .. (now + lease * 2))
  return 'probe'
end

-- open breakers whose cooldown is over release exactly one parked request as the probe; returns how many
local function release_probes(k, now, probe_ttl)
  local released = 0
  local brk = redis.call('HGETALL', k.brk)
  for i = 1, #brk, 2 do
    local domain, b = brk[i], brk[i + 1]
    local sep = string.find(b, '|', 1, true)
    local st, t = string.sub(b, 1, sep - 1), tonumber(string.sub(b, sep + 1))
    if t <= now then
      local pk = k.prefix .. 'parked:' .. domain
      local first = redis.call('ZRANGE', pk, 0, 0)
      if first[1] then
        local id = first[1]
        redis.call('ZREM', pk, id)
        local bk = k.prefix .. 'breaker:' .. domain
        redis.call('HSET', bk, 'state', 'half_open', 'probe', id, 'probe_until', now + probe_ttl)
        redis.call('HSET', k.brk, domain, 'half|' .. (now + probe_ttl))
        if to_ready(k, id) then released = released + 1 end
      end
    end
  end
  return released
end

-- Workers whose last LEASE left READY empty are listed in WAITING (score: until when they count); when
-- n entries reach READY while some wait, up to n of them (the longest waiting first) are taken out of
-- WAITING and each gets one message on its own channel (wake..':'..worker), so it leases at once instead
-- of at its next idle poll (by then the worker that queued the work has usually leased it itself). Why
-- not one message to all: with N waiting workers every new entry set off N LEASE calls, N - 1 of them
-- finding nothing (issue #18). A woken worker that finds READY empty again is listed again by its LEASE.
-- ``except``: the worker that queued the work, if any, wakes itself without a message. WAITING's
-- scores are Redis's own clock (TIME), not the callers': hosts whose clocks disagree by a second must
-- not drop each other's entries or miss each other's wake-ups.
local function wake(k, n, except)
  local _, nows = server_now()
  local ws = redis.call('ZRANGEBYSCORE', k.waiting, nows, '+inf', 'LIMIT', '0', string.format('%d', n + 1))
  local woken = 0
  for _, w in ipairs(ws) do
    if woken >= n then break end
    if w ~= except then
      unlogged('ZREM', k.waiting, w)
      redis.pcall('PUBLISH', k.wake .. ':' .. w, '1')  -- an ACL without PUBLISH: waiters poll, nothing fails
      woken = woken + 1
    end
  end
end

-- an expired lease is a delivery that ended without any outcome (its worker died or stalled): the
-- envelope's "lost" counter, its first key by contract (Envelope.to_dict), goes up by one. Rare (only
-- reaps), so a string edit of the JSON is cheap; cjson would turn an empty list into an object.
local function count_lost(k, id)
  local json = redis.call('HGET', k.env, id)
  if not json or string.sub(json, 1, 1) ~= '{' then return end
  local n = string.match(json, '^{"lost": ?(%d+)')
  if n then
    json = string.gsub(json, '^{"lost": ?%d+', '{"lost":' .. (tonumber(n) + 1), 1)
  else
    json = '{"lost":1,' .. string.sub(json, 2)
  end
  redis.call('HSET', k.env, id, json)
end

-- move due DELAYED entries and expired IN-FLIGHT leases back to READY
-- nows, lims: now and limit as the caller's ARGV strings (no number formatting: see server_now)
local function maintain(k, now, limit, nows, lims)
  local inflight, delayed = k.inflight, k.delayed
  local leasek = k.lease
  nows, lims = nows or string.format('%.17g', now), lims or string.format('%d', limit)
  local promoted, reaped = release_probes(k, now, 120), {}
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', nows, 'LIMIT', '0', lims)
  for _, id in ipairs(due) do
    redis.call('ZREM', delayed, id)
    if to_ready(k, id) then promoted = promoted + 1 end
  end
  local expired = redis.call('ZRANGEBYSCORE', inflight, '-inf', nows, 'LIMIT', '0', lims)
  for _, id in ipairs(expired) do
    redis.call('ZREM', inflight, id)
    local owner = redis.call('HGET', leasek, id)
    lease_end(k, id, owner)
    count_lost(k, id)
    if to_ready(k, id) then  -- redelivered work goes to the front of its priority level
      table.insert(reaped, id)
      table.insert(reaped, owner or '')
    else  -- acknowledged after the snapshot this IN-FLIGHT came from (unready): nothing left of it (logged, as
      -- the ZREM above: the snapshot brings the field back at every restart from it otherwise)
      redis.call('HDEL', leasek, id)
    end
  end
  if promoted > 0 or #reaped > 0 then wake(k, promoted + #reaped / 2) end
  return promoted, reaped
end

local function big_encoding(k)
  local mark = encoding_mark()
  redis.call('ZADD', k.inflight, 'NX', '+inf', mark)
  redis.call('HSETNX', k.lease, '~', mark)
end

local function unmark_idle(k)
  if redis.call('ZCARD', k.inflight) == 1 then redis.call('ZREM', k.inflight, encoding_mark()) end
end

-- a lease's IN-FLIGHT score: now + lease, rounded up to the whole second for leases of 10 s or more. Why:
-- Redis keeps a small sorted set (up to 128 entries, IN-FLIGHT's usual size) as a packed list whose
-- integral scores are stored as integers; a fractional one is parsed (strtod) at every comparison, which
-- made one ZADD into a 100-entry IN-FLIGHT cost ~11 µs (issue #18). A deadline up to a second late is
-- nothing against a lease of 10 s or more (60 s by default); shorter leases keep their exact deadline.
local function lease_deadline(now, lease)
  if lease >= 10 then return math.ceil(now + lease) end
  return now + lease
end

-- a lease's token (what owns compares): the worker, the entry's deliveries, and a nonce unique to the call
-- and the entry; LEASE, grant and COMMIT's recognition of its own claim all build it here
local function lease_token(worker, dlv, nonce)
  return worker .. '#' .. dlv .. '#' .. nonce
end

-- lease a just-enqueued child to this worker (see COMMIT); returns token, deliveries, or '', -1 when
-- the child stays in READY for LEASE to decide (DONE, its domain held or behind a breaker). The child is
-- not in READY yet (COMMIT adds its enqueued children at the end, a claimed one too, which it then takes
-- out of the live READY unlogged: unready says why). The grant's
-- writes go into pend (pend.tok: id, token pairs for LEASE's field; pend.inf: deadline, id pairs for
-- IN-FLIGHT; pend.by: id -> token), which COMMIT writes with one HSET and one ZADD for the batch. The
-- domain is read as LEASE reads it (env_head), not by decoding the whole envelope. The nonce keeps tokens
-- unique even if Redis lost recent writes and the deliveries repeat.
local function claim_child(k, done, id, json, cb, cs, now, lease, worker, nonce, pend)
  if sc_has(done, cb, cs) then return '', -1 end
  local _, _, domain = env_head(json)
  if domain and domain ~= '' then
    if redis.call('HEXISTS', k.brk, domain) == 1 then return '', -1 end
    local hold = tonumber(redis.call('HGET', k.hold, domain))
    if hold and hold > now then return '', -1 end
  end
  local dlv = deliveries(pend.by[id] or redis.call('HGET', k.lease, id)) + 1
  local token = lease_token(worker, dlv, nonce)
  pend.by[id] = token
  pend.tok[#pend.tok + 1] = id
  pend.tok[#pend.tok + 1] = token
  pend.inf[#pend.inf + 1] = string.format('%.17g', lease_deadline(now, lease))
  pend.inf[#pend.inf + 1] = id
  return token, dlv
end

-- an entry gone for good, leased or not (out of READY for the AOF and the replicas too: unready)
local function forget(k, id)
  if id ~= '' then unready(k, {id}, 1, 1) end  -- '': DEAD of an entry that never was one (a bad start entry)
  redis.call('ZREM', k.inflight, id)
  unlogged('HDEL', k.lease, id)
  redis.call('HDEL', k.env, id)
  if dlv_old(k) then redis.call('HDEL', k.dlv, id) end
end

-- forget of many entries: a few calls for the lot. leased: they may be leased (COMMIT's acks), so READY
-- loses them in the AOF's and the replicas' view too (unready); not: LEASE's, out of READY already. The
-- lease's own writes unlogged (unready says why): an entry acknowledged after a snapshot is dropped from
-- that snapshot's IN-FLIGHT when a restart reaps it (its envelope is gone)
local function forget_all(k, ids, leased)
  for j = 1, #ids, 500 do
    local last = math.min(j + 499, #ids)
    if leased then unready(k, ids, j, last) end
    local q = quiet()
    redis.call('ZREM', k.inflight, unpack(ids, j, last))
    redis.call('HDEL', k.lease, unpack(ids, j, last))
    loud(q)
    redis.call('HDEL', k.env, unpack(ids, j, last))
    if dlv_old(k) then redis.call('HDEL', k.dlv, unpack(ids, j, last)) end
  end
end
