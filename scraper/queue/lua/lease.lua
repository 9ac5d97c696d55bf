-- LEASE: maintenance (as MAINTAIN), then lease up to n READY entries to a worker.
-- KEYS: ready env hold brk parkdom delayed inflight lease dlv seq waiting wake cancelled
-- ARGV: prefix now n lease worker limit nonce
-- REPLY: {promoted, reaped flat (id, previous owner's token), leased flat (id, json, deliveries, token),
--   skipped flat (id, json), held, parked, remaining, cancelled}
-- COMPUTED: prefix..'done:'..run (the run is read from each leased envelope), prefix..'parked:'..domain
--   and prefix..'breaker:'..domain (the domain is read from each envelope, or from brk): known only
--   inside the script; and that DONE set's bucket strings (..':'..bucket, lua/_helpers.lua); all within
--   the {spider} hash tag of prefix.
-- An entry already DONE is dropped (skipped); one whose domain's breaker is open is parked; one whose
-- domain is held waits in DELAYED; the rest are leased for `lease` seconds. remaining: READY's size after.
-- An entry of a run `fleet cancel` marked (a field of `cancelled`) is forgotten unexecuted and counted in
-- cancelled: after the mark no entry of that run is leased, wherever it was when the mark was set.
local now, n, lease, worker, limit, nonce = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), ARGV[7]
local promoted, reaped = maintain(k, now, limit, ARGV[2], ARGV[6])
local leased, skipped, held, parked, cancelled = {}, {}, 0, 0, 0
local any_cancelled = redis.call('EXISTS', k.cancelled) == 1  -- the usual case costs one EXISTS a call
-- Batched (issue #18): READY's head, the envelopes, the DONE buckets, the domains' holds and breakers and
-- the deliveries counters are each read with one call for the whole batch (or one per distinct run or
-- domain), and the grants written with one call per structure, instead of about a dozen calls per entry.
if n > 2000 then n = 2000 end  -- unpack's limit: a bigger ask gets 2,000 and asks again
if n > 0 then
  local ids = redis.call('ZRANGE', k.ready, 0, n - 1)
  if #ids > 0 then
    local jsons = redis.call('HMGET', k.env, unpack(ids))
    -- per entry, in arrays (no table per entry: what a call allocates, Lua's collector costs Redis CPU for):
    -- what LEASE reads of its envelope (env_head) and its DONE key (when run and fp are usable); per DONE
    -- key: the fingerprints to look up
    local runs, efps, doms, fasts, dks, fps = {}, {}, {}, {}, {}, {}
    local function done_key(run, fp)
      if run and fp and #fp == 16 and string.match(fp, '^%x+$') then return k.prefix .. 'done:' .. run end
      return nil
    end
    for j = 1, #ids do
      local run, fp, domain, fast = nil, nil, nil, false
      if jsons[j] then run, fp, domain, fast = env_head(jsons[j]) end
      local dk = done_key(run, fp)
      runs[j], efps[j], doms[j], fasts[j], dks[j] = run or false, fp or false, domain or false, fast, dk or false
      if dk then
        local l = fps[dk]
        if not l then l = {}; fps[dk] = l end
        l[#l + 1] = fp
      end
    end
    for dk, l in pairs(fps) do sc_load(dk, l) end
    -- per domain: its HOLD deadline (false: none) and whether it has a breaker that is not closed (a
    -- breaker never comes into being during a LEASE, so an absent one stays absent for the call)
    local holds, brks, stopped, gone, granted = {}, {}, {}, {}, {}
    -- what decides an entry's fate: DONE in its run, its domain (nil: none) with its hold and breaker, and
    -- whether its run was cancelled
    -- dk: run's DONE key when run and fp are usable (done_key; false: not), known already or worked out here
    local function facts(run, fp, domain, dk)
      if dk == nil then dk = done_key(run, fp) end
      local done = dk and sc_has(dk, fphex(fp)) or false  -- done_key checked the 16 hex digits
      if domain == '' then domain = nil end
      local hold, brk = nil, false
      if domain then
        hold, brk = holds[domain], brks[domain]
        if hold == nil then
          hold = tonumber(redis.call('HGET', k.hold, domain)) or false
          brk = redis.call('HEXISTS', k.brk, domain) == 1
          holds[domain], brks[domain] = hold, brk
        end
      end
      local stop = false
      if any_cancelled and run then
        stop = stopped[run]
        if stop == nil then
          stop = redis.call('HEXISTS', k.cancelled, run) == 1
          stopped[run] = stop
        end
      end
      return done, domain, hold, brk, stop
    end
    local others = {}  -- what leaves READY for good (dropped, parked, held, no envelope): logged
    for j, id in ipairs(ids) do
      local json = jsons[j]
      if not json then
        others[#others + 1] = id
      else
        local done, domain, hold, brk, stop = facts(runs[j] or nil, efps[j] or nil, doms[j] or nil, dks[j])
        if (done or stop) and fasts[j] then
          -- dropped unfetched on what the patterns read: only if cjson reads the same (env_head)
          done, domain, hold, brk, stop = facts(env_cjson(json))
        end
        if stop then
          gone[#gone + 1] = id
          cancelled = cancelled + 1
        elseif done then
          gone[#gone + 1] = id
          skipped[#skipped + 1] = id
          skipped[#skipped + 1] = json
        elseif brk and breaker_gate(k, domain, id, now, lease) == 'park' then
          redis.call('ZADD', k.prefix .. 'parked:' .. domain, now, id)
          redis.call('SADD', k.parkdom, domain)
          parked = parked + 1
        elseif hold and hold > now then
          -- the target domain is backing off fleet-wide: wait in DELAYED, no delivery, no budget
          redis.call('ZADD', k.delayed, hold, id)
          held = held + 1
        else
          granted[#granted + 1] = j
        end
        if granted[#granted] ~= j then others[#others + 1] = id end
      end
    end
    for q = 1, #others, 1000 do redis.call('ZREM', k.ready, unpack(others, q, math.min(q + 999, #others))) end
    if #gone > 0 then forget_all(k, gone) end
    if #granted > 0 then
      -- grant (lua/_helpers.lua) for the lot: deliveries + 1, the lease deadline and the token
      local gids = {}
      for q, j in ipairs(granted) do gids[q] = ids[j] end
      big_encoding(k)
      local dl = redis.call('HMGET', k.lease, unpack(gids))  -- deliveries so far (lua/_helpers.lua)
      local old = dlv_old(k) and redis.call('HMGET', k.dlv, unpack(gids))
      local inf, tok = {}, {}
      -- numbers become strings once per call where they repeat (Lua formats each with snprintf)
      local deadline = string.format('%.17g', lease_deadline(now, lease))  -- as Redis would format it
      local nl = 0  -- leased's length (no table.insert: each was a call of a C function)
      for q, id in ipairs(gids) do
        local d = (dl[q] and deliveries(dl[q]) or (old and tonumber(old[q])) or 0) + 1
        local ds = d == 1 and '1' or tostring(d)
        local token = lease_token(worker, ds, nonce .. nl)
        local q2 = q + q
        inf[q2 - 1], inf[q2] = deadline, id
        tok[q2 - 1], tok[q2] = id, token
        leased[nl + 1], leased[nl + 2], leased[nl + 3], leased[nl + 4] = id, jsons[granted[q]], d, token
        nl = nl + 4
      end
      -- a lease is volatile: out of READY, into IN-FLIGHT and LEASE unlogged (lua/_helpers.lua: unready)
      local q = quiet()
      redis.call('ZREM', k.ready, unpack(gids))
      redis.call('ZADD', k.inflight, unpack(inf))
      redis.call('HSET', k.lease, unpack(tok))
      loud(q)
    end
  end
end
local remaining = redis.call('ZCARD', k.ready)
do  -- also for n = 0 (ShardedQueue asks a shard for nothing to learn its READY: listed there when empty)
  local waiting = k.waiting
  if remaining == 0 then
    -- READY is empty: this worker waits for news of work (see wake) instead of asking again at once;
    -- listed for over twice its longest idle poll (0.6 s): 2-3 s. A batch that was all held, parked or done
    -- leased nothing but leaves READY as it is: the worker asks again at once.
    local snow, snows = server_now()
    unmark_idle(k)  -- no work left to hand out: IN-FLIGHT's encoding mark goes if it is alone (_helpers.lua)
    -- WAITING's writes stay out of the AOF and the replicas (unlogged, lua/_helpers.lua)
    unlogged('ZREMRANGEBYSCORE', waiting, '-inf', '(' .. snows)
    unlogged('ZADD', waiting, string.format('%d', math.ceil(snow + 2)), worker)  -- integral: see lease_deadline
  else
    unlogged('ZREM', waiting, worker)
  end
end
return {promoted, reaped, leased, skipped, held, parked, remaining, cancelled}
