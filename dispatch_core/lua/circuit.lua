-- Circuit breakers' timer (every worker runs it, about once a second): open circuits whose
-- cool-down is over become half_open, and circuit changes not yet on the audit stream are
-- handed out, each to one caller per lease, until the caller confirms them (ZREM).
-- ARGV: now (ms), cool-down (ms), max events, lease (ms).
-- Reply: {#states * 2, executor, "state:since" ..., change event JSON ...}: the circuits that
-- are not closed (after this tick), then the changes to write.
local now, cooldown, limit, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local states = redis.call('HGETALL', 'dc:circuits')
for j = 1, #states, 2 do
  local ex = states[j]
  local c = circuit_state(ex)
  if c.state == 'open' and c.since + cooldown <= now then
    redis.call('HSET', 'dc:circuit:' .. ex, 'probes', 0)
    circuit_change(ex, c, 'half_open', 'cool-down of ' .. cooldown .. ' ms over: probing', #c.window,
                   count_failures(c.window), now, nil)
  end
end
local out = {}
states = redis.call('HGETALL', 'dc:circuits')
out[1] = #states
for j = 1, #states do
  out[#out + 1] = states[j]
end
for _, event in ipairs(redis.call('ZRANGEBYSCORE', 'dc:circuit:unrecorded', '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZADD', 'dc:circuit:unrecorded', now + lease, event)
  out[#out + 1] = event
end
return out
