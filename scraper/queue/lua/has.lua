-- HAS: membership of fingerprints in one SEEN/DONE set.
-- KEYS: set
-- ARGV: -
-- ARGV...: fp
-- REPLY: 1/0 per fp
-- COMPUTED: set..':'..bucket, the set's bucket strings (lua/_helpers.lua); within set's hash tag. A set of
--   the previous encoding is converted on the way (set_open), so HAS may write.
local out = {}
for i = 1, #ARGV do
  out[#out + 1] = set_has(k.set, ARGV[i]) and 1 or 0
end
return out
