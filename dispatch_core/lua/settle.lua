-- Settle one decision with the actual cost the executor reported. Idempotent.
-- ARGV: decision id, actual cost (micro-units), JSON list of budget keys to charge when no
-- reservation was held (a fail-open decision made while Redis was unreachable), the
-- reservation record's TTL (ms), and the TTL (ms) for a budget key this script has to create,
-- which outlives any budget window.
-- Reply: {status, reserved amount, scope keys JSON}; status is "settled", "late" (the
-- reservation had already been released: the spend still counts), "unreserved" (no
-- reservation: the spend is charged to the given keys), "dup" or "unknown".
local rkey = 'dc:resv:' .. ARGV[1]
local actual = tonumber(ARGV[2])
local r = redis.call('HMGET', rkey, 'amt', 'scopes', 'status')
local function charge(scopes_json)
  for _, k in ipairs(cjson.decode(scopes_json)) do
    redis.call('HINCRBY', k, 'spent', actual)
    if redis.call('PTTL', k) == -1 then  -- a window key recreated late: let it expire
      redis.call('PEXPIRE', k, tonumber(ARGV[5]))
    end
  end
end
if not r[1] then
  if ARGV[3] == '[]' then
    return {'unknown', 0, '[]'}
  end
  charge(ARGV[3])
  redis.call('HSET', rkey, 'amt', 0, 'scopes', ARGV[3], 'status', 'settled', 'actual', actual)
  redis.call('PEXPIRE', rkey, tonumber(ARGV[4]))
  return {'unreserved', 0, ARGV[3]}
end
if r[3] == 'settled' then
  return {'dup', tonumber(r[1]), r[2]}
end
local amt = tonumber(r[1])
if r[3] == 'reserved' then
  for _, k in ipairs(cjson.decode(r[2])) do
    redis.call('HINCRBY', k, 'reserved', -amt)
  end
end
charge(r[2])
redis.call('HSET', rkey, 'status', 'settled', 'actual', actual)
redis.call('ZREM', 'dc:resv:open', ARGV[1])
if r[3] == 'released' then
  return {'late', amt, r[2]}
end
return {'settled', amt, r[2]}
