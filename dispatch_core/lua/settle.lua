-- Settle one reservation with the actual cost the executor reported. Idempotent.
-- ARGV: decision id, actual cost (micro-units).
-- Reply: {status, reserved amount, scope keys JSON}; status is "settled", "late" (the
-- reservation had already been released: the spend is still counted), "dup" or "unknown".
local rkey = 'dc:resv:' .. ARGV[1]
local actual = tonumber(ARGV[2])
local r = redis.call('HMGET', rkey, 'amt', 'scopes', 'status')
if not r[1] then
  return {'unknown', 0, '[]'}
end
if r[3] == 'settled' then
  return {'dup', tonumber(r[1]), r[2]}
end
local amt = tonumber(r[1])
for _, k in ipairs(cjson.decode(r[2])) do
  if r[3] == 'reserved' then
    redis.call('HINCRBY', k, 'reserved', -amt)
  end
  redis.call('HINCRBY', k, 'spent', actual)
end
redis.call('HSET', rkey, 'status', 'settled', 'actual', actual)
redis.call('ZREM', 'dc:resv:open', ARGV[1])
if r[3] == 'released' then
  return {'late', amt, r[2]}
end
return {'settled', amt, r[2]}
