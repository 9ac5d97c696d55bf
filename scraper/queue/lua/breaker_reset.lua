-- BREAKER_RESET: close a domain's breaker by hand and release its parked requests to READY.
-- KEYS: brk parkdom env ready seq waiting wake breaker parked
-- ARGV: prefix domain now
-- REPLY: integer: how many parked requests were released
-- COMPUTED: none beyond KEYS: breaker and parked are the domain's, declared; the shared helpers build the
--   same two names from prefix and domain, because COMMIT and LEASE, which share them, cannot know the
--   domains in advance.
local n = breaker_close(k, k.breaker, ARGV[2], tonumber(ARGV[3]))
if n > 0 then wake(k, n) end
return n
