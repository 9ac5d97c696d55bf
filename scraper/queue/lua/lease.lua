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
local promoted, reaped = maintain(k, now, limit)
local leased, skipped, held, parked, cancelled = {}, {}, 0, 0, 0
local any_cancelled = redis.call('EXISTS', k.cancelled) == 1  -- the usual case costs one EXISTS a call
if n > 0 then
  local ids = redis.call('ZRANGE', k.ready, 0, n - 1)
  for _, id in ipairs(ids) do
    local json = redis.call('HGET', k.env, id)
    redis.call('ZREM', k.ready, id)
    if json then
      local ok, env = pcall(cjson.decode, json)
      local done = false
      if ok and type(env) == 'table' and type(env['run']) == 'string' and type(env['fp']) == 'string'
         and string.len(env['fp']) == 16 and string.match(env['fp'], '^%x+$') then
        done = set_has(k.prefix .. 'done:' .. env['run'], env['fp'])
      end
      local hold = nil
      if ok and type(env) == 'table' and type(env['domain']) == 'string' and env['domain'] ~= '' then
        hold = tonumber(redis.call('HGET', k.hold, env['domain']))
      end
      if any_cancelled and ok and type(env) == 'table' and type(env['run']) == 'string'
         and redis.call('HEXISTS', k.cancelled, env['run']) == 1 then
        forget(k, id)
        cancelled = cancelled + 1
      elseif done then
        forget(k, id)
        table.insert(skipped, id)
        table.insert(skipped, json)
      elseif ok and type(env) == 'table' and type(env['domain']) == 'string' and env['domain'] ~= ''
             and breaker_gate(k, env['domain'], id, now, lease) == 'park' then
        redis.call('ZADD', k.prefix .. 'parked:' .. env['domain'], now, id)
        redis.call('SADD', k.parkdom, env['domain'])
        parked = parked + 1
      elseif hold and hold > now then
        -- the target domain is backing off fleet-wide: wait in DELAYED, no delivery, no budget
        redis.call('ZADD', k.delayed, hold, id)
        held = held + 1
      else
        local token, dlv = grant(k, id, now, lease, worker, nonce .. #leased)
        table.insert(leased, id)
        table.insert(leased, json)
        table.insert(leased, dlv)
        table.insert(leased, token)
      end
    end
  end
end
local remaining = redis.call('ZCARD', k.ready)
if n > 0 then
  local waiting = k.waiting
  if remaining == 0 then
    -- READY is empty: this worker waits for news of work (see wake) instead of asking again at once;
    -- listed for over twice its longest idle poll (0.6 s). A batch that was all held, parked or done
    -- leased nothing but leaves READY as it is: the worker asks again at once.
    local snow = server_now()
    redis.call('ZREMRANGEBYSCORE', waiting, '-inf', '(' .. snow)
    redis.call('ZADD', waiting, snow + 2, worker)
  else
    redis.call('ZREM', waiting, worker)
  end
end
return {promoted, reaped, leased, skipped, held, parked, remaining, cancelled}
