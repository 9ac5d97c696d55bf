-- COMMIT: record DONE, enqueue discovered requests (they inherit the parent's run), feed item-callback
--   outcomes to the domain's drift breaker, then acknowledge; one script, one round trip per batch.
-- KEYS: env ready seq hold brk parkdom inflight lease dlv waiting wake cancelled
-- KEYS...: seen done
-- ARGV: prefix ttl now W minev rate cbase ccap ack lease worker nonce
-- ARGV...: r fp id token domain outcome claim ndisc nhops (then ndisc groups: id json fp prio dont_filter, then
--   nhops fp)
-- REPLY: {enqueued counts, events flat (domain, event), acked flags, claims flat (token, deliveries)}, one
--   count/flag/claim per commit; an unclaimed child gives ('', 0) when it was not queued (SEEN) and
--   ('', -1) when it waits in READY.
-- COMPUTED: prefix..'breaker:'..domain and prefix..'parked:'..domain (a breaker this batch closes releases
--   its parked requests); the domains vary per commit, so they are built inside the script; within the
--   {spider} hash tag of prefix. And seen..':'..bucket, done..':'..bucket: the bucket strings of the SEEN/DONE
--   sets (lua/_helpers.lua), within their hash tag.
-- One (seen, done) pair of KEYS per distinct run of the batch; a commit's r is the 1-based index of its
-- run's pair. ack: '1'/'0'. outcome: 'o', 'n' or '' (not tracked). An entry with fp '' only enqueues
-- children (sent as soon as the callback is done, before the writes).
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
local out, events, acked, claims = {}, {}, {}, {}
local fresh = 0
local any_cancelled = redis.call('EXISTS', k.cancelled) == 1
local stopped = {}  -- r -> whether that run was cancelled
local i = 13
while i <= #ARGV do
  local r, fp, id, token, domain, outcome = tonumber(ARGV[i]), ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  local claim, nd, nh = tonumber(ARGV[i+6]), tonumber(ARGV[i+7]), tonumber(ARGV[i+8])
  local seen, done = KEYS[KN + 2 * r - 1], KEYS[KN + 2 * r]
  i = i + 9
  -- '?'..fp: DONE (and the hops) only while the lease is still this worker's (see strict, above)
  local strict = string.sub(fp, 1, 1) == '?'
  if strict then fp = string.sub(fp, 2) end
  local mine = (not strict) or owns(k, id, token)
  if any_cancelled and stopped[r] == nil then
    stopped[r] = redis.call('HEXISTS', k.cancelled, string.sub(seen, string.len(k.prefix) + 6)) == 1
  end
  if stopped[r] then
    i = i + 5 * nd + nh
    table.insert(claims, '')
    table.insert(claims, 0)
    local ok = 0
    if fp ~= '' and do_ack and owns(k, id, token) then
      forget(k, id)
      ok = 1
    end
    table.insert(out, 0)
    table.insert(acked, ok)
  else
    local enq = 0
    local ctoken, cdlv = '', 0
    local took = 0  -- 1 when this call moved the claimed child from READY to IN-FLIGHT
    -- the hops first: a child linking to the page the request landed on is then SEEN, as in Scrapy
    for h = i + 5 * nd, i + 5 * nd + nh - 1 do
      if mine and set_add(seen, ARGV[h], ttl) == 1 then set_add(done, ARGV[h], ttl) end
    end
    for c = 1, nd do
      local added = enqueue(k, seen, ttl, ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4])
      enq = enq + added
      if c == claim and added == 1 then
        ctoken, cdlv = claim_child(k, done, ARGV[i], ARGV[i+1], ARGV[i+2], now, lease, worker, nonce .. 'c' .. #claims)
        if ctoken ~= '' then took = 1 end
      elseif c == claim and worker ~= '' then
        -- a retry of a call whose reply was lost: the child this very claim took is still ours
        local ours = worker .. '#1#' .. nonce .. 'c' .. #claims
        if redis.call('HGET', k.lease, ARGV[i]) == ours then ctoken, cdlv = ours, 1 end
      end
      i = i + 5
    end
    i = i + nh
    table.insert(claims, ctoken)
    table.insert(claims, cdlv)
    fresh = fresh + enq - took
    local ok = 0
    if fp ~= '' and strict then
      if mine then
        set_add(done, fp, ttl)
        if do_ack then
          forget(k, id)
          ok = 1
        end
      end
    elseif fp ~= '' then
      set_add(done, fp, ttl)
      if outcome ~= '' and domain ~= '' then
        local ev, released = breaker_record(k, domain, outcome, id, now, W, minev, rate, cbase, ccap)
        fresh = fresh + (released or 0)  -- a breaker this commit closed sent its parked requests to READY
        if ev ~= '' then
          table.insert(events, domain)
          table.insert(events, ev)
        end
      end
      if do_ack and owns(k, id, token) then
        forget(k, id)
        ok = 1
      end
    end
    table.insert(out, enq)
    table.insert(acked, ok)
  end
end
if fresh > 0 then wake(k, fresh, worker) end  -- children left in READY for any other worker
return {out, events, acked, claims}
