-- Settlement of a job's reservation against its actual usage, exactly once: takes and
-- deletes the reservation, adds the difference to the budgets it reserved in, and moves each
-- token limit's arrival time by the difference; and, in the same call, frees the job's
-- in-flight slot when its tenant has a cap.
-- KEYS[1] the job's reservation (string, JSON written by admit.lua: [tokens, cost, budget
--   key or '', key budget key or '', [GCRA key, T]...]), KEYS[2] in-flight leases (sorted
--   set), KEYS[3] deferrals (hash) — these two only touched when ARGV[5] is '1' —,
--   KEYS[4 .. 3 + ARGV[6]] the budget hashes (tenant's, key's) admission reserved in, then
--   KEYS[4 + ARGV[6] ..] the GCRA hashes of its token limits.
-- ARGV[1] actual tokens, ARGV[2] actual cost (micro-USD), ARGV[3] now (ms), ARGV[4] job id,
-- ARGV[5] '1' to free the job's in-flight slot, ARGV[6] how many budget hashes are passed,
-- ARGV[7 ..] T (ms per token) of each token limit's hash, in the order of the KEYS.
-- Only a call that passes no budget or token-limit keys (a job published before the worker
-- passed them) settles against the keys the reservation names; they are the same tenant's,
-- with its hash tag.
-- Returns 1 settled, 0 nothing to settle (already settled or never reserved).
if ARGV[5] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('HDEL', KEYS[3], ARGV[4])
end
local raw = redis.call('GETDEL', KEYS[1])
if not raw then return 0 end
local r = cjson.decode(raw)
local now = tonumber(ARGV[3])
local dt = tonumber(ARGV[1]) - r[1]
local dc = tonumber(ARGV[2]) - r[2]
if dt == 0 and dc == 0 then return 1 end
local budgets, limits = {}, {}
if #KEYS > 3 then
  local nb = tonumber(ARGV[6])
  for i = 1, nb do budgets[i] = KEYS[3 + i] end
  for i = 4 + nb, #KEYS do
    local n = #limits + 1
    limits[n] = {KEYS[i], tonumber(ARGV[6 + n])}
  end
else
  for _, b in ipairs({r[3] or '', r[4] or ''}) do
    if b ~= '' then budgets[#budgets + 1] = b end
  end
  for i = 5, #r do limits[#limits + 1] = r[i] end
end
for _, b in ipairs(budgets) do
  if redis.call('EXISTS', b) == 1 then
    if dt ~= 0 then redis.call('HINCRBY', b, 'tokens', dt) end
    if dc ~= 0 then redis.call('HINCRBY', b, 'cost', dc) end
  end
end
-- A token limit's arrival time moves by the difference; one that falls behind now (or a
-- hash that had expired, which the increment creates anew) is dropped: no state is the
-- same as an arrival time in the past.
if dt ~= 0 then
  for _, l in ipairs(limits) do
    local key, T = l[1], l[2]
    local new = tonumber(redis.call('HINCRBYFLOAT', key, 't', dt * T))
    if new <= now then
      redis.call('HDEL', key, 't')
    elseif dt > 0 then
      redis.call('PEXPIRE', key, math.ceil(new - now) + 1000, 'GT')
    end
  end
end
return 1
