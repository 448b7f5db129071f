-- Settle one decision with the cost its executor reported. One settlement per decision: it is
-- idempotent for the same report, and a second report never charges again.
-- ARGV: decision id, actual cost (micro-units), JSON list of budget keys to charge when no
-- reservation was held (a fail-open decision made while Redis was unreachable), the
-- reservation record's TTL (ms), the TTL (ms) for a budget key this script has to create
-- (it outlives any window), and the report's identity (the same report redelivered keeps it).
-- Reply: {kind, reserved amount, scope keys JSON, actual charged (micro-units), currency}:
--   settled       the reservation is swapped for the actual cost
--   settled_late  the reservation had expired into presumed spend: the estimate is swapped
--                 for the actual cost
--   unreserved    no reservation: the actual cost is charged to the given keys (none: only recorded)
--   duplicate     the decision was settled already by another report: nothing is charged
-- The same report again gets the reply of its first settlement, so its event can be written
-- again exactly as it was (a batch whose outputs were lost is redone idempotently).
local rkey = 'dc:resv:' .. ARGV[1]
local actual = tonumber(ARGV[2])
local rid = ARGV[6]
local r = redis.call('HMGET', rkey, 'amt', 'scopes', 'status', 'actual', 'kind', 'rid', 'cur')
local function charge(scopes_json, amount)
  for _, k in ipairs(cjson.decode(scopes_json)) do
    redis.call('HINCRBY', k, 'spent', amount)
    if redis.call('PTTL', k) == -1 then  -- a window key recreated late: let it expire
      redis.call('PEXPIRE', k, tonumber(ARGV[5]))
    end
  end
end
local function record(kind, amt, scopes)
  redis.call('HSET', rkey, 'amt', amt, 'scopes', scopes, 'status', 'settled', 'actual', actual, 'kind', kind, 'rid', rid)
  redis.call('PEXPIRE', rkey, tonumber(ARGV[4]))
  redis.call('ZREM', 'dc:resv:open', ARGV[1])
  return {kind, amt, scopes, actual, r[7] or ''}
end
if r[3] == 'settled' then
  if r[6] == rid then
    return {r[5], tonumber(r[1]), r[2], tonumber(r[4]), r[7] or ''}
  end
  return {'duplicate', tonumber(r[1]), r[2], 0, r[7] or ''}
end
if not r[1] then
  charge(ARGV[3], actual)
  return record('unreserved', 0, ARGV[3])
end
local amt = tonumber(r[1])
if r[3] == 'reserved' then
  for _, k in ipairs(cjson.decode(r[2])) do
    redis.call('HINCRBY', k, 'reserved', -amt)
  end
  charge(r[2], actual)
  return record('settled', amt, r[2])
end
-- expired: the estimate was kept as presumed spend; the actual cost replaces it
for _, k in ipairs(cjson.decode(r[2])) do
  redis.call('HINCRBY', k, 'presumed', -amt)
end
charge(r[2], actual - amt)
return record('settled_late', amt, r[2])
