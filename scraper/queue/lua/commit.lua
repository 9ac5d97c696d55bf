-- COMMIT: record DONE, enqueue discovered requests (they inherit the parent's run), feed item-callback
--   outcomes to the domain's drift breaker, then acknowledge; one script, one round trip per batch.
-- KEYS: env ready seq hold brk parkdom inflight lease dlv waiting wake cancelled
-- KEYS...: seen done
-- ARGV: prefix ttl now W minev rate cbase ccap ack lease worker nonce
-- ARGV...: r fp id token domain outcome claim ndisc nhops (then ndisc groups: id json fp prio dont_filter, then
--   nhops fp)
-- REPLY: {enqueued counts, events flat (domain, event), acked flags, claims flat (token, deliveries)}, one
--   count/flag/claim per commit (an 'h' entry's flag: its hops counted); an unclaimed child gives ('', 0)
--   when it was not queued (SEEN) and ('', -1) when it waits in READY.
-- COMPUTED: prefix..'breaker:'..domain and prefix..'parked:'..domain (a breaker this batch closes releases
--   its parked requests); the domains vary per commit, so they are built inside the script; within the
--   {spider} hash tag of prefix. And seen..':'..bucket, done..':'..bucket: the bucket strings of the SEEN/DONE
--   sets (lua/_helpers.lua), within their hash tag.
-- Every fingerprint (fp, a child's fp, a hop) comes as FleetQueue sends it, packed (seenset.packed: its
-- bucket and member, 10 bytes; fpsplit), or as 16 hex digits.
-- One (seen, done) pair of KEYS per distinct run of the batch; a commit's r is the 1-based index of its
-- run's pair. ack: '1'/'0'. outcome: 'o', 'n' or '' (not tracked). An entry with fp '' only enqueues
-- children (sent as soon as the callback is done, before the writes); its outcome 'h' says it is the
-- children commit of a request still in flight whose redirect hops it records: see the hops, below.
-- A commit may claim one of its children (1-based index, 0 = none): when that child was really enqueued
-- (not SEEN, not DONE) and its domain is neither held nor behind a breaker, it goes straight from READY to
-- IN-FLIGHT under a lease of this worker's, exactly as LEASE would hand it out. The worker has already
-- started fetching it (page N+1 of a pagination chain); without the claim the fetch is thrown away. The
-- claim's token derives from the nonce, so a retry with the same nonce (the first reply was lost) finds
-- the child already SEEN but still leased under that token, and answers it as claimed: without this the
-- chain would wait for the lease to expire.
-- strict (fp sent as '?'..fp): an ignored request's acknowledgement (nothing written), whose reason
--   another delivery of it could have changed (a redirect hop found SEEN may be the hop its redelivery
--   recorded), so DONE and its hops are recorded only when this worker still owns the lease; a stale
--   delivery leaves no trace and the live one settles the request. No children, no breaker outcome.
-- A commit of a run `fleet cancel` marked (a field of `cancelled`; the run is the tail of its seen key)
-- queues no children, records no DONE and feeds no breaker: it only acknowledges the lease.
-- hops: the fingerprints of the redirect hops the request followed (it was not dont_filter, and each hop
--   was not SEEN when the worker checked), recorded in SEEN as Scrapy's dupefilter records a redirect it
--   schedules, so a later link to a redirect's target is not fetched again: with its children (which may
--   link back to it) and again with its DONE (a request without children). Only the first delivery of a
--   request checks its hops (scraper.worker.redirects): a redelivery after a crash follows them, so a hop
--   recorded here before the request was written never drops its page. A hop new to SEEN goes into DONE
--   too (its page is the request's object), so seen = done + dlq + parked + queued still holds; a hop
--   SEEN meanwhile (a link to it was queued after the check) is left alone: that request is fetched.
local ttl, now = tonumber(ARGV[2]), tonumber(ARGV[3])
local W, minev, rate, cbase, ccap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local do_ack = ARGV[9] == '1'
local lease, worker, nonce = tonumber(ARGV[10]), ARGV[11], ARGV[12]
local sub = string.sub
local out, events, acked, claims = {}, {}, {}, {}
local fresh = 0
local any_cancelled = redis.call('EXISTS', k.cancelled) == 1
local stopped = {}  -- r -> whether that run was cancelled
-- Batched (issue #18). A first pass reads the commits; then every lease token, and every SEEN and DONE
-- bucket the batch can touch, are read with one call each (HMGET, MGET per set); the commits are then
-- decided one by one, in order, against what this call has read and changed (lua/_helpers.lua: sc_*),
-- so a batch behaves exactly as its commits would one after another; and the writes go out at the end,
-- one call per structure: children's envelopes (HSET) and READY entries (ZADD, scores from one INCRBY of
-- seq, as ready_score would number them), the acknowledged leases (forget_all), the SEEN/DONE adds
-- (sc_flush) and the breaker windows (breaker_flush).
-- The first pass keeps only where each commit starts in ARGV (no table per commit: Lua's collector costs
-- Redis CPU in proportion to what a call allocates); the second reads its fields from there again.
local starts, ids, want = {}, {}, {}  -- ARGV index of each commit; the lease ids to check; set key -> fps
local rs, nds, nhs, cls = {}, {}, {}, {}  -- per commit: r, ndisc, nhops, claim as numbers (read once)
local function need(key, fp)
  local l = want[key]
  if not l then l = {}; want[key] = l end
  l[#l + 1] = fp
end
local i = 13
while i <= #ARGV do
  local r, fp, nd, nh, claim = tonumber(ARGV[i]), ARGV[i+1], tonumber(ARGV[i+7]), tonumber(ARGV[i+8]), tonumber(ARGV[i+6])
  local m = #starts + 1
  starts[m], rs[m], nds[m], nhs[m], cls[m] = i, r, nd, nh, claim
  local kids = i + 9
  local hops = kids + 5 * nd
  i = hops + nh
  local seen, done = KEYS[KN + 2 * r - 1], KEYS[KN + 2 * r]
  if fp ~= '' then
    ids[#ids + 1] = ARGV[kids - 7]
    if sub(fp, 1, 1) == '?' then fp = sub(fp, 2) end
    need(done, fp)
  elseif ARGV[kids - 4] == 'h' then
    ids[#ids + 1] = ARGV[kids - 7]  -- a children-only entry of a request in flight: its lease is checked (below)
  end
  for h = hops, hops + nh - 1 do
    need(seen, ARGV[h])
    need(done, ARGV[h])
  end
  for g = kids, hops - 1, 5 do
    if ARGV[g+4] ~= '1' then need(seen, ARGV[g+2]) end
  end
  if claim > 0 and claim <= nd then need(done, ARGV[kids + 5 * (claim - 1) + 2]) end
end
local owner = {}  -- lease id -> its token now (false: none); forgetting one sets false
for j = 1, #ids, 500 do  -- unpack's limit: FLEET_COMMIT_BATCH has no maximum
  local last = math.min(j + 499, #ids)
  local got = redis.call('HMGET', k.lease, unpack(ids, j, last))
  for q = j, last do owner[ids[q]] = got[q - j + 1] or false end
end
for key, l in pairs(want) do sc_load(key, l) end
local ready, envs = {}, {}  -- the enqueued children: READY's (prio, id) in enqueue order; env's (id, json)
local queued = {}  -- ids of the children this call enqueued (their envelopes are written at the end)
local rpos = {}  -- child id -> its slot in ready (not yet written)
-- write the pending READY entries, scores from one INCRBY of seq in enqueue order (as ready_score numbers
-- them): at the end, and before a breaker this batch closes queues its parked requests (breaker_note)
-- A claimed child is only there for the AOF and the replicas (a lease is volatile: lua/_helpers.lua, unready):
-- numbered 0, it needs no INCRBY (it is leased; after a restart it comes last of its priority).
local isclaimed = {}  -- claimed child id -> true
local function flush_ready()
  local zs = {}
  local m, mc = 0, 0
  for q = 2, #ready, 2 do
    if ready[q] then
      m = m + 1
      if isclaimed[ready[q]] then mc = mc + 1 end
    end
  end
  if m == 0 then ready, rpos = {}, {}; return end
  local top = m > mc and redis.call('INCRBY', k.seq, string.format('%d', m - mc)) or 0
  local nth = 0
  for q = 1, #ready, 2 do
    local cid = ready[q + 1]
    if cid then
      if isclaimed[cid] then
        zs[#zs + 1] = ready_at(ready[q], 0)
      else
        nth = nth + 1
        zs[#zs + 1] = ready_at(ready[q], top - (m - mc) + nth)
      end
      zs[#zs + 1] = cid
    end
  end
  local marked = ready_big(k, m)  -- a batch of children: READY's encoding (lua/_helpers.lua)
  for q = 1, #zs, 1000 do redis.call('ZADD', k.ready, unpack(zs, q, math.min(q + 999, #zs))) end
  ready_done(k, marked)
  ready, rpos = {}, {}
end
local pend = {tok = {}, inf = {}, by = {}}  -- the claims' grants, written at the end (claim_child)
local gone = {}  -- the acknowledged leases
local function ack(id)
  gone[#gone + 1] = id
  owner[id] = false
end
local nout, nev, nclaims = 0, 0, 0  -- how many out/acked, events, claims hold (no table.insert: a C call each)
for m, at in ipairs(starts) do
  local r, fp, id, token, domain, outcome = rs[m], ARGV[at+1], ARGV[at+2], ARGV[at+3], ARGV[at+4], ARGV[at+5]
  local claim, nd, nh = cls[m], nds[m], nhs[m]
  local kids = at + 9
  local hops = kids + 5 * nd
  local seen, done = KEYS[KN + 2 * r - 1], KEYS[KN + 2 * r]
  -- '?'..fp: DONE (and the hops) only while the lease is still this worker's (see strict, above)
  local strict = sub(fp, 1, 1) == '?'
  if strict then fp = sub(fp, 2) end
  local mine = (not strict) or owner[id] == token
  if any_cancelled and stopped[r] == nil then
    stopped[r] = redis.call('HEXISTS', k.cancelled, sub(seen, string.len(k.prefix) + 6)) == 1
  end
  if stopped[r] then
    claims[nclaims + 1], claims[nclaims + 2] = '', 0
    nclaims = nclaims + 2
    local ok = 0
    if fp ~= '' and do_ack and owner[id] == token then
      ack(id)
      ok = 1
    end
    nout = nout + 1
    out[nout], acked[nout] = 0, ok
  else
    local enq = 0
    local ctoken, cdlv = '', 0
    local took = 0  -- 1 when this call leased the claimed child instead of queueing it
    -- the hops first: a child linking to the page the request landed on is then SEEN, as in Scrapy. The
    -- hops of a request's children commit ('h'), where the request lives (its envelope is in this shard),
    -- count only while the lease is still the sender's: a restart or a failover forgets leases
    -- (lua/_helpers.lua: unready), and another delivery may hold it, whose first-delivery hop check would find
    -- them SEEN and drop the page (its final commit brings them again, with its DONE). Recorded, they make
    -- its next delivery not its first (dlv_old); its reply's acked is then 1 (ShardedQueue sends an 'h'
    -- entry alone to the request's shard first, and the hops to their shards only on that 1). Anywhere
    -- else (another shard, any other entry), hops are recorded as sent.
    local hentry = fp == '' and outcome == 'h'
    local here = hentry and redis.call('HEXISTS', k.env, id) == 1
    local counted = 0
    if mine and not (here and owner[id] ~= token) then
      for h = hops, hops + nh - 1 do
        local hb, hs = fpsplit(ARGV[h])
        if sc_add(seen, ttl, hb, hs) == 1 then sc_add(done, ttl, hb, hs) end
      end
      if here then dlv_mark(k, id) end
      if hentry then counted = 1 end
    end
    local g = kids
    for ci = 1, nd do
      local cid, json, cfp, prio, dont_filter = ARGV[g], ARGV[g+1], ARGV[g+2], ARGV[g+3], ARGV[g+4]
      local added = 0
      local cb, cs = fpsplit(cfp)
      if dont_filter ~= '1' then
        added = sc_add(seen, ttl, cb, cs)
      elseif not queued[cid] and redis.call('HEXISTS', k.env, cid) == 0 then
        -- as enqueue (lua/_helpers.lua): a known id is this very child sent again (a retried commit);
        -- a new one is counted in SEEN (DONE will hold its start fingerprint)
        sc_add(seen, ttl, cb, cs)
        added = 1
      end
      if added == 1 then
        queued[cid] = true
        envs[#envs + 1] = cid
        envs[#envs + 1] = json
        enq = enq + 1
        if ci == claim then
          ctoken, cdlv = claim_child(k, done, cid, json, cb, cs, now, lease, worker, nonce .. 'c' .. nclaims, pend)
        end
        if rpos[cid] then ready[rpos[cid] + 1] = false end  -- queued twice: the later score, as ZADD keeps
        rpos[cid] = #ready + 1
        ready[#ready + 1] = prio
        ready[#ready + 1] = cid
        if ctoken ~= '' and ci == claim then
          -- leased at once, as LEASE would: in READY for the AOF and the replicas (a lease is volatile:
          -- lua/_helpers.lua, unready), out of the live READY unlogged after the last flush_ready
          took = 1
          isclaimed[cid] = true
        else
          isclaimed[cid] = nil  -- queued again unclaimed (a caller reusing an id): READY keeps it, as one by one
        end
      elseif ci == claim and worker ~= '' then
        -- a retry of a call whose reply was lost: the child this very claim took is still ours
        local ours = lease_token(worker, '1', nonce .. 'c' .. nclaims)
        if (pend.by[cid] or redis.call('HGET', k.lease, cid)) == ours then ctoken, cdlv = ours, 1 end
      end
      g = g + 5
    end
    claims[nclaims + 1], claims[nclaims + 2] = ctoken, cdlv
    nclaims = nclaims + 2
    fresh = fresh + enq - took
    local ok = counted
    if fp ~= '' and strict then
      if mine then
        sc_add(done, ttl, fpsplit(fp))
        if do_ack then
          ack(id)
          ok = 1
        end
      end
    elseif fp ~= '' then
      sc_add(done, ttl, fpsplit(fp))
      if outcome ~= '' and domain ~= '' then
        local ev, released = breaker_note(k, domain, outcome, id, now, W, minev, rate, cbase, ccap, flush_ready)
        fresh = fresh + (released or 0)  -- a breaker this commit closed sent its parked requests to READY
        if ev ~= '' then
          events[nev + 1], events[nev + 2] = domain, ev
          nev = nev + 2
        end
      end
      if do_ack and owner[id] == token then
        ack(id)
        ok = 1
      end
    end
    nout = nout + 1
    out[nout], acked[nout] = enq, ok
  end
end
-- the writes (see Batched, above)
for q = 1, #envs, 1000 do redis.call('HSET', k.env, unpack(envs, q, math.min(q + 999, #envs))) end
flush_ready()
if #pend.tok > 0 then  -- the claims' grants, unlogged as LEASE's
  local still = {}  -- the claimed children (not those queued again unclaimed since)
  for cid in pairs(isclaimed) do still[#still + 1] = cid end
  local off = quiet()
  for q = 1, #still, 1000 do redis.call('ZREM', k.ready, unpack(still, q, math.min(q + 999, #still))) end
  for q = 1, #pend.tok, 1000 do
    redis.call('HSET', k.lease, unpack(pend.tok, q, math.min(q + 999, #pend.tok)))
    redis.call('ZADD', k.inflight, unpack(pend.inf, q, math.min(q + 999, #pend.inf)))
  end
  loud(off)
end
if #gone > 0 then forget_all(k, gone, true) end
sc_flush()
breaker_flush(k)
if fresh > 0 then wake(k, fresh, worker) end  -- children left in READY for any other worker
return {out, events, acked, claims}
