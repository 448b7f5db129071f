-- Functions shared by settle.lua and commit.lua (the ledger prepends this file to both):
-- settling one decision's reservation, and recording an executor's outcome in its circuit.

-- The reservation record a settlement reads and writes: {amt, scopes, status, actual, kind, rid, cur}.
local function reservation(id)
  return redis.call('HMGET', 'dc:resv:' .. id, 'amt', 'scopes', 'status', 'actual', 'kind', 'rid', 'cur')
end

-- The reply for a reservation `r` already settled, to report `rid`: its first reply again if
-- `rid` made it, else a duplicate that charged nothing.
local function settled_reply(r, rid)
  if r[6] == rid then
    return {r[5], tonumber(r[1]), r[2], tonumber(r[4]), r[7] or ''}
  end
  return {'duplicate', tonumber(r[1]), r[2], 0, r[7] or ''}
end

-- The effect settling decision `id` with `actual` would have on each budget key's committed
-- spend, and its reservation record: reserved or expired -> actual - amount on its scopes;
-- no reservation -> + actual on `charge_scopes` (a fail-open route's budget keys).
local function settle_delta(id, actual, charge_scopes)
  local r = reservation(id)
  local delta = {}
  if r[3] == 'settled' then
    return delta, r
  end
  if not r[1] then
    for _, k in ipairs(cjson.decode(charge_scopes)) do delta[k] = actual end
  else
    for _, k in ipairs(cjson.decode(r[2])) do delta[k] = actual - tonumber(r[1]) end
  end
  return delta, r
end

-- Settle decision `id` with the `actual` cost (micro-units), once. `rid` names the report:
-- the same report again gets its first reply; another report for a settled decision is a
-- duplicate that charges nothing. Reply {kind, reserved amount, scopes JSON, actual charged,
-- currency} and whether this call changed anything (false for a replay or a duplicate).
-- Kinds: settled (reservation swapped for the actual cost), settled_late (it had expired into
-- presumed spend: the estimate is swapped for the actual cost), unreserved (none held: the
-- actual cost is charged to `charge_scopes`), duplicate.
local function settle_one(id, actual, charge_scopes, resv_ttl, budget_ttl, rid)
  local rkey = 'dc:resv:' .. id
  local r = reservation(id)
  local function charge(scopes_json, amount)
    for _, k in ipairs(cjson.decode(scopes_json)) do
      redis.call('HINCRBY', k, 'spent', amount)
      if redis.call('PTTL', k) == -1 then  -- a window key recreated late: let it expire
        redis.call('PEXPIRE', k, budget_ttl)
      end
    end
  end
  local function record(kind, amt, scopes)
    redis.call('HSET', rkey, 'amt', amt, 'scopes', scopes, 'status', 'settled', 'actual', actual, 'kind', kind, 'rid', rid)
    redis.call('PEXPIRE', rkey, resv_ttl)
    redis.call('ZREM', 'dc:resv:open', id)
    return {kind, amt, scopes, actual, r[7] or ''}, true
  end
  if r[3] == 'settled' then
    return settled_reply(r, rid), false
  end
  if not r[1] then
    charge(charge_scopes, actual)
    return record('unreserved', 0, charge_scopes)
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
end

-- A circuit change, queued for the audit stream (handed out by circuit.lua until recorded).
local function circuit_change(ex, c, to, reason, calls, failures, now, did)
  local seq = redis.call('HINCRBY', 'dc:circuit:' .. ex, 'seq', 1)
  local event = cjson.encode({executor = ex, seq = seq, from_state = c.state, to_state = to, reason = reason,
                              calls = calls, failures = failures, consecutive_failures = c.consec,
                              changed_at = now, decision_id = did})
  redis.call('HSET', 'dc:circuit:' .. ex, 'state', to, 'since', now)
  if to == 'closed' then
    redis.call('HDEL', 'dc:circuits', ex)
  else
    redis.call('HSET', 'dc:circuits', ex, to .. ':' .. now)
  end
  redis.call('ZADD', 'dc:circuit:unrecorded', 0, event)
end

local function circuit_state(ex)
  local v = redis.call('HMGET', 'dc:circuit:' .. ex, 'state', 'since', 'consec', 'window', 'probes')
  return {state = v[1] or 'closed', since = tonumber(v[2]) or 0, consec = tonumber(v[3]) or 0, window = v[4] or '',
          probes = tonumber(v[5]) or 0}
end

local function count_failures(window)
  local _, n = string.gsub(window, '1', '')
  return n
end

-- Record one outcome of executor `ex` (failed: a retryable failure) and change its circuit
-- when the outcome crosses a threshold. cfg: {w: window, min: min calls, rate: failure rate,
-- consec: consecutive failures, close: successful probes that close it}.
local function circuit_record(ex, failed, now, cfg, did)
  local c = circuit_state(ex)
  local window = string.sub(c.window .. (failed and '1' or '0'), -cfg.w)
  c.consec = failed and c.consec + 1 or 0
  local calls, failures = #window, count_failures(window)
  redis.call('HSET', 'dc:circuit:' .. ex, 'window', window, 'consec', c.consec)
  if c.state == 'closed' and failed then
    if c.consec >= cfg.consec then
      circuit_change(ex, c, 'open', c.consec .. ' consecutive failures', calls, failures, now, did)
    elseif calls >= cfg.min and failures >= cfg.rate * calls then
      circuit_change(ex, c, 'open', failures .. ' of the last ' .. calls .. ' outcomes failed', calls, failures, now, did)
    end
  elseif c.state == 'half_open' then
    if failed then
      circuit_change(ex, c, 'open', 'a probe failed', calls, failures, now, did)
    else
      local probes = redis.call('HINCRBY', 'dc:circuit:' .. ex, 'probes', 1)
      if probes >= cfg.close then
        redis.call('HSET', 'dc:circuit:' .. ex, 'window', '', 'consec', 0, 'probes', 0)
        circuit_change(ex, c, 'closed', probes .. ' probes succeeded', calls, failures, now, did)
      end
    end
  end
end
