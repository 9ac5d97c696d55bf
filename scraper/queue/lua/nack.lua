-- NACK: move a lease this worker owns to DELAYED with an updated envelope (a retry later).
-- KEYS: lease inflight env delayed dlv cancelled ready
-- ARGV: id token due json
-- REPLY: 1 when moved, 0 when the lease was lost, 2 when the envelope's run was cancelled (`fleet cancel`):
--   the entry is forgotten instead of waiting in DELAYED for a retry nobody wants
local id, token, due, json = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not owns(k, id, token) then return 0 end
if redis.call('EXISTS', k.cancelled) == 1 then
  local ok, env = pcall(cjson.decode, json)
  if ok and type(env) == 'table' and type(env['run']) == 'string'
     and redis.call('HEXISTS', k.cancelled, env['run']) == 1 then
    forget(k, id)
    return 2
  end
end
unready(k, {id}, 1, 1)  -- in READY for the AOF and the replicas while leased (lua/_helpers.lua)
redis.call('ZREM', k.inflight, id)
lease_end(k, id, token)
redis.call('HSET', k.env, id, json)
redis.call('ZADD', k.delayed, due, id)
return 1
