-- Admission of one request: the tenant's kill switch, loop detection, every rate limit
-- (GCRA), the tenant's and the API key's budgets; only when all pass are the new arrival
-- times, the budget reservations and the job's reservation committed.
-- KEYS[1] tenant (hash), KEYS[2] loop counter, KEYS[3] tenant budget (hash),
-- KEYS[4] the job's reservation (hash), KEYS[5] key budget (hash),
-- KEYS[5 + i] arrival time of rate limit i (1..nrate).
-- ARGV[1] now (ms), ARGV[2] loop max per minute (0: off), ARGV[3] budget tokens,
-- ARGV[4] budget cost (micro-USD), ARGV[5] estimated tokens, ARGV[6] estimated cost,
-- ARGV[7] reservation TTL (s), ARGV[8] budget TTL (s), ARGV[9] '1' to record a reservation,
-- ARGV[10] nrate, then per limit: T (ms per unit), tau (ms), cost, '1' for a token limit;
-- then key budget tokens, key budget cost, key budget TTL (s).
-- Returns {code, i, ms, remaining, budget tokens used, budget cost used}: code 0 admitted
--   (i: the tightest limit, ms: until it resets), 1 disabled, 2 loop (ms: retry after),
--   3 rate limited by limit i (ms: retry after), 4 budget (i: 1 tenant tokens, 2 tenant
--   cost, 3 key tokens, 4 key cost).
local now = tonumber(ARGV[1])
if redis.call('HGET', KEYS[1], 'disabled') == '1' then return {1, 0, 0, 0, 0, 0} end
local loop_max = tonumber(ARGV[2])
if loop_max > 0 then
  local n = redis.call('INCR', KEYS[2])
  if n == 1 then redis.call('PEXPIRE', KEYS[2], 60000) end
  if n > loop_max then return {2, 0, redis.call('PTTL', KEYS[2]), 0, 0, 0} end
end
local nrate = tonumber(ARGV[10])
local news = {}
local best, best_ratio, best_rem, best_reset = 0, 2, 0, 0
local token_dims = {}
for i = 1, nrate do
  local b = 10 + (i - 1) * 4
  local T, tau, cost = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local tat = tonumber(redis.call('GET', KEYS[5 + i]) or '0')
  if tat < now then tat = now end
  local new = tat + cost * T
  if new - now > tau then
    return {3, i, math.ceil(new - now - tau), 0, 0, 0}
  end
  news[i] = new
  local rem = math.floor((tau - (new - now)) / T)
  local ratio = (tau - (new - now)) / tau
  if ratio < best_ratio then best, best_ratio, best_rem, best_reset = i, ratio, rem, math.ceil(new - now) end
  if ARGV[b + 4] == '1' then table.insert(token_dims, {KEYS[5 + i], T}) end
end
local btok, bcost = tonumber(ARGV[3]), tonumber(ARGV[4])
local kb = 11 + nrate * 4
local ktok, kcost = tonumber(ARGV[kb]), tonumber(ARGV[kb + 1])
local etok, ecost = tonumber(ARGV[5]), tonumber(ARGV[6])
local used_t, used_c = 0, 0
if btok > 0 or bcost > 0 then
  used_t = tonumber(redis.call('HGET', KEYS[3], 'tokens') or '0')
  used_c = tonumber(redis.call('HGET', KEYS[3], 'cost') or '0')
  if btok > 0 and used_t + etok > btok then return {4, 1, 0, 0, 0, 0} end
  if bcost > 0 and used_c + ecost > bcost then return {4, 2, 0, 0, 0, 0} end
end
if ktok > 0 or kcost > 0 then
  local kt = tonumber(redis.call('HGET', KEYS[5], 'tokens') or '0')
  local kc = tonumber(redis.call('HGET', KEYS[5], 'cost') or '0')
  if ktok > 0 and kt + etok > ktok then return {4, 3, 0, 0, 0, 0} end
  if kcost > 0 and kc + ecost > kcost then return {4, 4, 0, 0, 0, 0} end
  redis.call('HINCRBY', KEYS[5], 'tokens', etok)
  redis.call('HINCRBY', KEYS[5], 'cost', ecost)
  redis.call('EXPIRE', KEYS[5], ARGV[kb + 2])
end
if btok > 0 or bcost > 0 then
  redis.call('HINCRBY', KEYS[3], 'tokens', etok)
  redis.call('HINCRBY', KEYS[3], 'cost', ecost)
  redis.call('EXPIRE', KEYS[3], ARGV[8])
end
for i = 1, nrate do
  redis.call('SET', KEYS[5 + i], tostring(news[i]), 'PX', math.ceil(news[i] - now) + 1000)
end
if ARGV[9] == '1' then
  local budget, kbudget = '', ''
  if btok > 0 or bcost > 0 then budget = KEYS[3] end
  if ktok > 0 or kcost > 0 then kbudget = KEYS[5] end
  redis.call('HSET', KEYS[4], 'tokens', etok, 'cost', ecost, 'budget', budget, 'kbudget', kbudget, 'rl', cjson.encode(token_dims))
  redis.call('EXPIRE', KEYS[4], ARGV[7])
end
return {0, best, best_reset, best_rem, used_t + etok, used_c + ecost}
