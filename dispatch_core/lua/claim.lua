-- An executor's claim on a routed task, by decision id: one step, so one run per decision.
-- ARGV: decision id, owner (a stable name of the executor instance), lease (ms).
-- Reply: "run" (claimed: run it), "running" (another owner holds a live lease: wait for it),
-- "done" (it ran: skip it). The same owner gets "run" again for its own live claim: it is
-- the owner restarted after dying mid-run (an owner de-duplicates its own concurrent
-- deliveries in process). A lease that lapses (its owner died and did not come back) lets
-- another owner claim it: a run that never completed is retried, a completed one never is.
local k = 'dc:claim:' .. ARGV[1]
local v = redis.call('GET', k)
if v == 'done' then
  return 'done'
end
if v and v ~= 'run:' .. ARGV[2] then
  return 'running'
end
redis.call('SET', k, 'run:' .. ARGV[2], 'PX', tonumber(ARGV[3]))
return 'run'
