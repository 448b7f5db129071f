-- Commit a batch of decisions atomically, in order. Idempotent by decision id.
-- ARGV[1]: JSON array of items:
--   {d: decision id, h: task content hash, cur: currency, who: [task id, service, executor],
--    rec: record JSON ({source, decision}; older records are the bare decision) cut in two around the
--         decision's sequence number: [before, after], ttl: record lifetime ms,
--    amt: micro-units to reserve,
--    enforce: 0|1, scopes: [{k: budget key, lim: cap, exp: key expiry ms}], exp: reservation expiry ms,
--    bl: {k, x: raw complexity, a: alpha, m0: prior mean, v0: prior variance},
--    tr: [[budget key, 0|1, key expiry ms]], nb: true to leave the baseline alone (a fallback's task
--    was counted by its first decision),
--    p: (a fallback only) the failed attempt to settle in the same step: {d: its decision id,
--       act: partial cost (micro-units), cs: JSON budget keys to charge if it held no reservation,
--       rid: the failure report's identity, ex: its executor (whose circuit counts the failure)}}
-- ARGV[2]: JSON {s: [budget keys], b: [baseline keys]} whose state to report after the batch.
-- ARGV[3]: JSON {now: ms, cfg: circuit config, rttl: reservation record TTL ms, bttl: budget key TTL ms}
--    (used by fallbacks only).
-- A fallback settles its failed attempt and reserves its own estimate in one step, or does
-- neither: its cap check counts the failed attempt's reservation as already swapped for its
-- partial cost. If the failed attempt was settled by another report, the failure report is a
-- duplicate: status "pdup", no fallback. Its redelivery finds the fallback stored ("dup").
-- Every "ok" decision gets the next number of the ledger's commit order (dc:seq, shared by all
-- workers; one GET and one INCRBY per batch), in the order of the batch, stored in its record.
-- Reply: flat array, three entries per item: status ("ok" | "dup" | "conflict" | "over" | "pdup"), for
-- "ok" its sequence number, for "dup" and "conflict" the stored record, and for a fallback the
-- JSON of its failed attempt's settlement reply (settle_one's), else '': a redelivered task (same
-- content hash) gets its first decision back, sequence included, with no second charge; the same id with other content is a conflict;
-- then three fields per reported key, as snapshot.lua gives them, so that the caller's
-- next batch can start from the state this one left without another read.
local items = cjson.decode(ARGV[1])
local report = cjson.decode(ARGV[2])
local env = ARGV[3] and cjson.decode(ARGV[3]) or {}
local out = {}
local seq = tonumber(redis.call('GET', 'dc:seq')) or 0
local numbered = 0
-- the failed attempt's settlement as it stands (a replay of the same report gets its reply back)
local function parent_reply(p)
  local r = reservation(p.d)
  return r[3] == 'settled' and cjson.encode(settled_reply(r, p.rid)) or ''
end
for _, it in ipairs(items) do
  local dkey = 'dc:decision:' .. it.d
  local existing = redis.call('GET', dkey)
  local p = it.p
  local delta = {}
  local settled_by_other = false
  if p then  -- a fallback: whichever report settled its failed attempt first made it
    local r
    delta, r = settle_delta(p.d, p.act, p.cs)
    settled_by_other = r[3] == 'settled' and r[6] ~= p.rid
  end
  if settled_by_other then
    out[#out + 1] = 'pdup'
    out[#out + 1] = ''
    out[#out + 1] = parent_reply(p)
  elseif existing then
    local doc = cjson.decode(existing)
    local stored_h = (doc.decision or doc).task_hash  -- absent (cjson.null/nil) in records from before hashes
    if type(stored_h) == 'string' and type(it.h) == 'string' and stored_h ~= it.h then
      out[#out + 1] = 'conflict'
    else
      out[#out + 1] = 'dup'
    end
    out[#out + 1] = existing
    out[#out + 1] = p and parent_reply(p) or ''  -- a replay of the report that made the fallback
  else
    local fits = true
    if it.amt > 0 and it.enforce == 1 then
      for _, s in ipairs(it.scopes) do
        local v = redis.call('HMGET', s.k, 'spent', 'reserved')
        if (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0) + (delta[s.k] or 0) + it.amt > s.lim then
          fits = false
          break
        end
      end
    end
    if not fits then
      out[#out + 1] = 'over'
      out[#out + 1] = ''
      out[#out + 1] = ''
    else
      local settled = ''
      if p then
        local reply, fresh = settle_one(p.d, p.act, p.cs, env.rttl, env.bttl, p.rid)
        if fresh then  -- a retryable failure: it counts against its executor's circuit
          circuit_record(p.ex, true, env.now, env.cfg, p.d)
        end
        settled = cjson.encode(reply)
      end
      if it.amt > 0 then
        local scope_keys = {}
        for _, s in ipairs(it.scopes) do
          redis.call('HINCRBY', s.k, 'reserved', it.amt)
          redis.call('PEXPIREAT', s.k, s.exp + 86400000)
          scope_keys[#scope_keys + 1] = s.k
        end
        local rkey = 'dc:resv:' .. it.d
        redis.call('HSET', rkey, 'amt', it.amt, 'scopes', cjson.encode(scope_keys), 'status', 'reserved', 'cur', it.cur,
                   'tid', it.who[1], 'svc', it.who[2], 'ex', it.who[3])
        redis.call('PEXPIRE', rkey, it.ttl)
        redis.call('ZADD', 'dc:resv:open', it.exp, it.d)
      end
      for _, f in ipairs(it.tr) do
        redis.call('HSET', f[1], 'trend', f[2])
        redis.call('PEXPIREAT', f[1], f[3] + 86400000)
      end
      if not it.nb then
        local b = it.bl
        local cur = redis.call('HMGET', b.k, 'n', 'mean', 'var')
        local n = tonumber(cur[1]) or 0
        local mean, var = b.m0, b.v0
        if n > 0 then
          mean = tonumber(cur[2])
          var = tonumber(cur[3])
        end
        local dx = b.x - mean
        mean = mean + b.a * dx
        var = (1 - b.a) * (var + b.a * dx * dx)
        redis.call('HSET', b.k, 'n', n + 1, 'mean', string.format('%.17g', mean), 'var', string.format('%.17g', var))
      end
      numbered = numbered + 1
      redis.call('SET', dkey, it.rec[1] .. string.format('%d', seq + numbered) .. it.rec[2], 'PX', it.ttl)
      out[#out + 1] = 'ok'
      out[#out + 1] = seq + numbered
      out[#out + 1] = settled
    end
  end
end
if numbered > 0 then
  redis.call('INCRBY', 'dc:seq', numbered)
end
local function fields(keys, a, b, c)
  for _, k in ipairs(keys) do
    local v = redis.call('HMGET', k, a, b, c)
    out[#out + 1] = v[1] or ''
    out[#out + 1] = v[2] or ''
    out[#out + 1] = v[3] or ''
  end
end
fields(report.s, 'spent', 'reserved', 'trend')
fields(report.b, 'n', 'mean', 'var')
return out
