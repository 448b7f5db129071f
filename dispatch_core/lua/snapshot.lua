-- Read everything a batch of decisions needs in one command (one round trip, one reply to parse).
-- ARGV: #scopes, #baselines, #decisions, then the scope keys, baseline keys and decision ids.
-- Reply: {scope fields..., baseline fields..., stored decisions..., #load entries, load hash (flat),
--         circuits not closed (flat: executor, "state:since ms")}
local ns, nb, nd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local i = 4
local function fields(n, a, b, c)
  for _ = 1, n do
    local v = redis.call('HMGET', ARGV[i], a, b, c)
    out[#out + 1] = v[1] or ''
    out[#out + 1] = v[2] or ''
    out[#out + 1] = v[3] or ''
    i = i + 1
  end
end
fields(ns, 'spent', 'reserved', 'trend')
fields(nb, 'n', 'mean', 'var')
for _ = 1, nd do
  out[#out + 1] = redis.call('GET', 'dc:decision:' .. ARGV[i]) or ''
  i = i + 1
end
local load = redis.call('HGETALL', 'dc:load')
out[#out + 1] = #load
for j = 1, #load do
  out[#out + 1] = load[j]
end
for _, v in ipairs(redis.call('HGETALL', 'dc:circuits')) do
  out[#out + 1] = v
end
return out
