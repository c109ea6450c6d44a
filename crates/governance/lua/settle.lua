-- Settlement of a job's reservation against its actual usage, exactly once: takes and
-- deletes the reservation, adds the difference to the budgets it reserved in, and moves each
-- token limit's arrival time by the difference; and, in the same call, frees the job's
-- in-flight slot when its tenant has a cap.
-- KEYS[1] the job's reservation (string, JSON written by admit.lua: [tokens, cost]; one
--   written before it also names its counters: [tokens, cost, budget key or '', key
--   budget key or '', [GCRA key, T]...]), KEYS[2] in-flight leases (sorted set), KEYS[3]
--   deferrals (hash) — these two only touched when ARGV[5] is '1' —, KEYS[4 .. 3 +
--   ARGV[6]] the budget hashes (tenant's, key's) admission reserved in, then KEYS[4 +
--   ARGV[6] ..] the GCRA hashes of its token limits.
-- ARGV[1] actual tokens, ARGV[2] actual cost (micro-USD), ARGV[3] now (ms), ARGV[4] job id,
-- ARGV[5] '1' to free the job's in-flight slot, ARGV[6] how many budget hashes are passed,
-- ARGV[7 ..] T (ms per token) of each token limit's hash, in the order of the KEYS.
-- Only a call that passes no budget or token-limit keys (a job published before the worker
-- passed them) settles against the keys an old reservation names; they are the same
-- tenant's, with its hash tag.
-- Returns {1, waiting} settled, {0, waiting} nothing to settle (already settled or never
--   reserved); waiting: with ARGV[5] '1', how many of the tenant's jobs are deferred (0
--   without), so the worker wakes the others only when a job waits for the freed slot.
local waiting = 0
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('HDEL', KEYS[3], ARGV[4])
  waiting = redis.call('HLEN', KEYS[3])
end
local raw = redis.call('GETDEL', KEYS[1])
if not raw then return {0, waiting} end
local rt, rc = string.match(raw, '^%[(%d+),(%d+)%]$')
local r = false
if not rt then
  r = cjson.decode(raw)
  rt, rc = r[1], r[2]
end
local dt = tonumber(ARGV[1]) - tonumber(rt)
local dc = tonumber(ARGV[2]) - tonumber(rc)
if dt == 0 and dc == 0 then return {1, waiting} end
-- The counters: budget hashes first, then token limits as (hash, T) pairs, from the
-- call's keys or, for an old reservation settled without them, from the reservation.
local budgets, limits = {}, {}
local nb = tonumber(ARGV[6])
if #KEYS > 3 then
  for i = 4, 3 + nb do budgets[#budgets + 1] = KEYS[i] end
  for i = 4 + nb, #KEYS do
    limits[#limits + 1] = KEYS[i]
    limits[#limits + 1] = tonumber(ARGV[3 + i - nb])
  end
elseif r then
  for i = 3, 4 do
    if r[i] and r[i] ~= '' then budgets[#budgets + 1] = r[i] end
  end
  for i = 5, #r do
    limits[#limits + 1] = r[i][1]
    limits[#limits + 1] = r[i][2]
  end
end
-- A budget hash that has expired (its period is over) is not made anew: an increment that
-- answers exactly the difference may have created it (one without an expiry did), and is
-- then deleted.
for _, b in ipairs(budgets) do
  local gone = false
  if dt ~= 0 and redis.call('HINCRBY', b, 'tokens', dt) == dt then
    gone = redis.call('PTTL', b) < 0
  end
  if gone then
    redis.call('DEL', b)
  elseif dc ~= 0 and redis.call('HINCRBY', b, 'cost', dc) == dc and redis.call('PTTL', b) < 0 then
    redis.call('DEL', b)
  end
end
-- A token limit's arrival time moves by the difference; one that falls behind now (or a
-- hash that had expired, which the increment creates anew) is dropped: no state is the
-- same as an arrival time in the past.
if dt ~= 0 then
  local now = tonumber(ARGV[3])
  for i = 1, #limits, 2 do
    local key = limits[i]
    local new = tonumber(redis.call('HINCRBYFLOAT', key, 't', dt * limits[i + 1]))
    if new <= now then
      redis.call('HDEL', key, 't')
    elseif dt > 0 then
      redis.call('PEXPIRE', key, math.ceil(new - now) + 1000, 'GT')
    end
  end
end
return {1, waiting}
