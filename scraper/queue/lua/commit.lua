-- COMMIT: record DONE, enqueue discovered requests (they inherit the parent's run), feed item-callback
--   outcomes to the domain's drift breaker, then acknowledge; one script, one round trip per batch.
-- KEYS: env ready seq hold brk parkdom inflight lease dlv waiting wake cancelled
-- KEYS...: seen done
-- ARGV: prefix ttl now W minev rate cbase ccap ack lease worker nonce
-- ARGV...: r fp id token domain outcome claim ndisc (then ndisc groups: id json fp prio dont_filter)
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
-- A commit of a run `fleet cancel` marked (a field of `cancelled`; the run is the tail of its seen key)
-- queues no children, records no DONE and feeds no breaker: it only acknowledges the lease.
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
  local claim, nd = tonumber(ARGV[i+6]), tonumber(ARGV[i+7])
  local seen, done = KEYS[KN + 2 * r - 1], KEYS[KN + 2 * r]
  i = i + 8
  if any_cancelled and stopped[r] == nil then
    stopped[r] = redis.call('HEXISTS', k.cancelled, string.sub(seen, string.len(k.prefix) + 6)) == 1
  end
  if stopped[r] then
    i = i + 5 * nd
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
    for c = 1, nd do
      local added = enqueue(k, seen, ttl, ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4])
      enq = enq + added
      if c == claim and added == 1 then
        ctoken, cdlv = claim_child(k, done, ARGV[i], ARGV[i+1], ARGV[i+2], now, lease, worker, nonce .. 'c' .. #claims)
        if ctoken ~= '' then took = 1 end
      elseif c == claim and worker ~= '' then
        -- a retry of a call whose reply was lost: the child this very claim took is still ours
        local mine = worker .. '#1#' .. nonce .. 'c' .. #claims
        if redis.call('HGET', k.lease, ARGV[i]) == mine then ctoken, cdlv = mine, 1 end
      end
      i = i + 5
    end
    table.insert(claims, ctoken)
    table.insert(claims, cdlv)
    fresh = fresh + enq - took
    local ok = 0
    if fp ~= '' then
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
