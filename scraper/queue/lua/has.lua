-- HAS: membership of fingerprints in one SEEN/DONE set.
-- KEYS: set
-- ARGV: -
-- ARGV...: fp
-- REPLY: 1/0 per fp
local out = {}
for i = 1, #ARGV do
  out[#out + 1] = set_has(k.set, ARGV[i]) and 1 or 0
end
return out
