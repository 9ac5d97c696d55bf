-- UNGATE: hand gate permits back (a fetch ended) or renew them (the heartbeat), and feed each domain's
--   AIMD window with the fetch's latency and outcome; a batch of any domains in one call.
-- KEYS: -
-- KEYS...: permits gstate
-- ARGV: permit_ttl
-- ARGV...: id latency_ms outcome
-- REPLY: the number of permits released
-- outcome: ok (an answer, not 429/503/class B), bad (429, 503, a timeout, class B), none (no measure:
-- released unfetched, cancelled, failed otherwise), renew (the permit's expiry becomes now + ttl).
-- AIMD (a domain GATE marked aimd): the smoothed latency lat (EWMA, 0.2) and its best value (which
-- creeps up 0.1 % a sample so it can be learnt again); target = 2 x best + 100 ms. ok under target: the
-- window grows by 1/window; bad: the window halves, at most once per smoothed latency period (at
-- least 100 ms): a burst of 429s from one period is one signal. Bounds [1, wmax].
local ttl = tonumber(ARGV[1])
local now = server_now()
local released = 0
for j = 1, #KEYS / 2 do
  local permits, g = KEYS[2 * j - 1], KEYS[2 * j]
  local id, ms, outcome = ARGV[3 * j - 1], tonumber(ARGV[3 * j]) or 0, ARGV[3 * j + 1]
  if outcome == 'renew' then
    -- the set's own TTL moves too: a fetch longer than it would otherwise lose every permit of the domain
    if redis.call('ZADD', permits, 'XX', 'CH', now + ttl, id) == 1 then
      redis.call('EXPIRE', permits, math.ceil(ttl) + 60)
    end
  else
    released = released + redis.call('ZREM', permits, id)
    if outcome == 'ok' or outcome == 'bad' then
      local st = redis.call('HMGET', g, 'aimd', 'win', 'wmax', 'lat', 'best', 'dec')
      if st[1] == '1' then
        local win, wmax = tonumber(st[2]) or 1, tonumber(st[3]) or 1
        local lat, best, dec = tonumber(st[4]), tonumber(st[5]), tonumber(st[6]) or 0
        if outcome == 'ok' then
          lat = lat and (0.8 * lat + 0.2 * ms) or ms
          best = best and math.min(best * 1.001, lat) or lat
          if ms <= 2 * best + 100 then win = math.min(wmax, win + 1 / win) end
        elseif now - dec >= math.max(100, lat or 0) / 1000 then
          win = math.max(1, win * 0.5)
          dec = now
        end
        local f = {'win', win, 'dec', dec}
        if lat then
          for _, x in ipairs({'lat', lat, 'best', best}) do table.insert(f, x) end
        end
        redis.call('HSET', g, unpack(f))
      elseif outcome == 'ok' then
        local lat = tonumber(redis.call('HGET', g, 'lat'))
        redis.call('HSET', g, 'lat', lat and (0.8 * lat + 0.2 * ms) or ms)
      end
    end
  end
end
return released
