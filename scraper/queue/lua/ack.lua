-- ACK: acknowledge leases without committing (forget the entries this worker still owns).
-- KEYS: lease inflight env dlv ready
-- ARGV: -
-- ARGV...: id token
-- REPLY: 1/0 per pair (0: the lease was lost)
local out = {}
for i = 1, #ARGV, 2 do
  if owns(k, ARGV[i], ARGV[i+1]) then
    forget(k, ARGV[i])
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
