-- Expire reservations whose settlement did not come in time, and hand out expiries to record.
-- An expired reservation does not give its room back: the task may still be running and settle
-- late, so its estimate moves from reserved to spent, marked as presumed, until the window ends
-- or a late settlement replaces it with the actual cost. Caps therefore bound actual spend.
-- Recording is two-phase so no expiry goes unrecorded if a worker dies between Redis and
-- Kafka: expiries wait in dc:resv:unrecorded until the caller confirms their events were
-- written (recorded.lua); each is leased to one caller at a time.
-- ARGV: now (ms), max entries, lease (ms).
-- Reply: flat array, seven entries per expiry to record: decision id, amount (micro-units),
-- scope keys JSON, currency, task id, service, executor.
local now, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', 'dc:resv:open', '-inf', now, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  local rkey = 'dc:resv:' .. id
  local r = redis.call('HMGET', rkey, 'amt', 'scopes', 'status')
  redis.call('ZREM', 'dc:resv:open', id)
  if r[3] == 'reserved' then
    local amt = tonumber(r[1])
    for _, k in ipairs(cjson.decode(r[2])) do
      redis.call('HINCRBY', k, 'reserved', -amt)
      redis.call('HINCRBY', k, 'spent', amt)
      redis.call('HINCRBY', k, 'presumed', amt)
    end
    redis.call('HSET', rkey, 'status', 'expired')
    redis.call('ZADD', 'dc:resv:unrecorded', now, id)
  end
end
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', 'dc:resv:unrecorded', '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZADD', 'dc:resv:unrecorded', now + lease, id)
  local r = redis.call('HMGET', 'dc:resv:' .. id, 'amt', 'scopes', 'cur', 'tid', 'svc', 'ex')
  out[#out + 1] = id
  out[#out + 1] = r[1] or '0'
  out[#out + 1] = r[2] or '[]'
  for j = 3, 6 do
    out[#out + 1] = r[j] or ''
  end
end
return out
