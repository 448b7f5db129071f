-- Settle one decision with the cost its executor reported (lib.lua's settle_one), and record
-- the executor's outcome in its circuit breaker in the same step.
-- ARGV: decision id, actual cost (micro-units), JSON list of budget keys to charge when no
-- reservation was held (a fail-open decision made while Redis was unreachable), the
-- reservation record's TTL (ms), the TTL (ms) for a budget key this script has to create
-- (it outlives any window), the report's identity (the same report redelivered keeps it),
-- the executor, its outcome for the circuit ('ok', 'fail' for a retryable failure, '' for
-- none: permanent failures, expiries, duplicates), now (ms), circuit config JSON (lib.lua).
-- Reply: {kind, reserved amount, scope keys JSON, actual charged (micro-units), currency}.
-- The same report again gets the reply of its first settlement (and records no second
-- outcome), so its event can be written again exactly as it was.
local reply, fresh = settle_one(ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
if fresh and ARGV[8] ~= '' then
  circuit_record(ARGV[7], ARGV[8] == 'fail', tonumber(ARGV[9]), cjson.decode(ARGV[10]), ARGV[1])
end
return reply
