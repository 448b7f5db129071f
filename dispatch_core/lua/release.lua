-- Release reservations never settled before their expiry, so they cannot leak into a
-- phantom "budget exceeded". Safe to run from every worker at once.
-- ARGV: now (ms), max reservations to release.
-- Reply: flat array, two entries each: decision id, amount released (micro-units).
local ids = redis.call('ZRANGEBYSCORE', 'dc:resv:open', '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local rkey = 'dc:resv:' .. id
  local r = redis.call('HMGET', rkey, 'amt', 'scopes', 'status')
  redis.call('ZREM', 'dc:resv:open', id)
  if r[3] == 'reserved' then
    local amt = tonumber(r[1])
    for _, k in ipairs(cjson.decode(r[2])) do
      redis.call('HINCRBY', k, 'reserved', -amt)
    end
    redis.call('HSET', rkey, 'status', 'released')
    out[#out + 1] = id
    out[#out + 1] = amt
  end
end
return out
