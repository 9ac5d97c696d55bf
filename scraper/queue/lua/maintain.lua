-- MAINTAIN: move due DELAYED entries and expired IN-FLIGHT leases back to READY, and release one parked
--   request as the probe of each breaker whose cooldown is over; an IN-FLIGHT that holds only LEASE's
--   encoding mark is emptied (lua/_helpers.lua: big_encoding).
-- KEYS: inflight delayed lease env ready seq brk waiting wake
-- ARGV: prefix now limit
-- REPLY: {promoted, reaped flat (id, previous owner's token)}
-- COMPUTED: prefix..'parked:'..domain and prefix..'breaker:'..domain for the domains listed in brk (known
--   only inside the script); within the {spider} hash tag of prefix.
local promoted, reaped = maintain(k, tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[2], ARGV[3])
unmark_idle(k)
return {promoted, reaped}
