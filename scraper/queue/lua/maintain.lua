-- MAINTAIN: move due DELAYED entries and expired IN-FLIGHT leases back to READY, and release one parked
--   request as the probe of each breaker whose cooldown is over; an IN-FLIGHT that holds only LEASE's
--   encoding mark is emptied (lua/_helpers.lua: big_encoding); and up to 50 of LEASE's fields are swept
--   (lua/_helpers.lua: lease_sweep).
-- KEYS: inflight delayed lease env ready seq brk waiting wake lsweep
-- ARGV: prefix now limit
-- REPLY: {promoted, reaped flat (id, previous owner's token)}
-- COMPUTED: prefix..'parked:'..domain and prefix..'breaker:'..domain for the domains listed in brk (known
--   only inside the script); within the {spider} hash tag of prefix.
local promoted, reaped = maintain(k, tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[2], ARGV[3])
unmark_idle(k)
lease_sweep(k, 50)
return {promoted, reaped}
