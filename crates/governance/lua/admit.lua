-- Admission of one request: the tenant's kill switch, loop detection, every rate limit
-- (GCRA; one hash per dimension, fields `r` and `t`: the theoretical arrival times, ms, of
-- its request and its token limit), the tenant's and the API key's budgets; only when all
-- pass are the new arrival times, the budget reservations and the job's reservation
-- committed.
-- KEYS[1] tenant (hash), KEYS[2] loop counter, KEYS[3] tenant budget (hash),
-- KEYS[4] the job's reservation (string), KEYS[5] key budget (hash),
-- KEYS[5 + d] GCRA state of dimension d (hash: r, t), d = 1..ndim.
-- ARGV[1] now (ms), ARGV[2] loop max per minute (0: off), ARGV[3] budget tokens,
-- ARGV[4] budget cost (micro-USD), ARGV[5] estimated tokens, ARGV[6] estimated cost,
-- ARGV[7] reservation TTL (s), ARGV[8] budget TTL (s), ARGV[9] '1' to record a reservation,
-- ARGV[10] key budget tokens, ARGV[11] key budget cost, ARGV[12] key budget TTL (s),
-- ARGV[13] ndim, then per dimension: T (ms per request) and tau (ms) of its request limit,
-- T (ms per token) and tau of its token limit (T = 0: that limit is off).
-- Returns {code, i, ms, remaining, budget tokens used, budget cost used}: code 0 admitted
--   (i: the tightest limit, ms: until it resets), 1 disabled, 2 loop (ms: retry after),
--   3 rate limited by limit i (ms: retry after), 4 budget (i: 1 tenant tokens, 2 tenant
--   cost, 3 key tokens, 4 key cost). Limit i is field f (1 requests, 2 tokens) of
--   dimension d: i = 2 * (d - 1) + f.
-- The reservation is JSON: [tokens, cost, budget key or '', key budget key or '',
--   [GCRA key, T of its token limit]...], which settle.lua reads.
local now = tonumber(ARGV[1])
if redis.call('HGET', KEYS[1], 'disabled') == '1' then return {1, 0, 0, 0, 0, 0} end
local loop_max = tonumber(ARGV[2])
if loop_max > 0 then
  local n = redis.call('INCR', KEYS[2])
  if n == 1 then redis.call('PEXPIRE', KEYS[2], 60000) end
  if n > loop_max then return {2, 0, redis.call('PTTL', KEYS[2]), 0, 0, 0} end
end
local etok, ecost = tonumber(ARGV[5]), tonumber(ARGV[6])
local ndim = tonumber(ARGV[13])
local news = {}
local best, best_ratio, best_rem, best_reset = 0, 2, 0, 0
local token_dims = {}
for d = 1, ndim do
  local b = 13 + (d - 1) * 4
  local tats = redis.call('HMGET', KEYS[5 + d], 'r', 't')
  local new = {}
  for f = 1, 2 do
    local T, tau = tonumber(ARGV[b + 2 * f - 1]), tonumber(ARGV[b + 2 * f])
    if T > 0 then
      local cost = 1
      if f == 2 then cost = etok end
      local tat = tonumber(tats[f] or '0')
      if tat < now then tat = now end
      local at = tat + cost * T
      if at - now > tau then
        return {3, 2 * (d - 1) + f, math.ceil(at - now - tau), 0, 0, 0}
      end
      new[f] = at
      local ratio = (tau - (at - now)) / tau
      if ratio < best_ratio then
        best, best_ratio = 2 * (d - 1) + f, ratio
        best_rem, best_reset = math.floor((tau - (at - now)) / T), math.ceil(at - now)
      end
      if f == 2 then table.insert(token_dims, {KEYS[5 + d], T}) end
    end
  end
  news[d] = new
end
local btok, bcost = tonumber(ARGV[3]), tonumber(ARGV[4])
local ktok, kcost = tonumber(ARGV[10]), tonumber(ARGV[11])
local used_t, used_c, fresh = 0, 0, false
if btok > 0 or bcost > 0 then
  local u = redis.call('HMGET', KEYS[3], 'tokens', 'cost')
  fresh = not u[1] and not u[2]
  used_t, used_c = tonumber(u[1] or '0'), tonumber(u[2] or '0')
  if btok > 0 and used_t + etok > btok then return {4, 1, 0, 0, 0, 0} end
  if bcost > 0 and used_c + ecost > bcost then return {4, 2, 0, 0, 0, 0} end
end
-- Adds the estimate to a budget hash; a new one expires after its period.
local function reserve(key, ttl, new_hash)
  if etok ~= 0 then redis.call('HINCRBY', key, 'tokens', etok) end
  if ecost ~= 0 then redis.call('HINCRBY', key, 'cost', ecost) end
  if new_hash then redis.call('EXPIRE', key, ttl) end
end
if ktok > 0 or kcost > 0 then
  local u = redis.call('HMGET', KEYS[5], 'tokens', 'cost')
  local kt, kc = tonumber(u[1] or '0'), tonumber(u[2] or '0')
  if ktok > 0 and kt + etok > ktok then return {4, 3, 0, 0, 0, 0} end
  if kcost > 0 and kc + ecost > kcost then return {4, 4, 0, 0, 0, 0} end
  reserve(KEYS[5], ARGV[12], not u[1] and not u[2])
end
if btok > 0 or bcost > 0 then reserve(KEYS[3], ARGV[8], fresh) end
for d = 1, ndim do
  local new, last = news[d], 0
  local fields = {}
  for f, field in ipairs({'r', 't'}) do
    if new[f] then
      table.insert(fields, field)
      table.insert(fields, string.format('%.3f', new[f]))
      if new[f] > last then last = new[f] end
    end
  end
  redis.call('HSET', KEYS[5 + d], unpack(fields))
  redis.call('PEXPIRE', KEYS[5 + d], math.ceil(last - now) + 1000)
end
if ARGV[9] == '1' then
  local budget, kbudget = '', ''
  if btok > 0 or bcost > 0 then budget = KEYS[3] end
  if ktok > 0 or kcost > 0 then kbudget = KEYS[5] end
  local r = {etok, ecost, budget, kbudget}
  for _, e in ipairs(token_dims) do table.insert(r, e) end
  redis.call('SET', KEYS[4], cjson.encode(r), 'EX', ARGV[7])
end
return {0, best, best_reset, best_rem, used_t + etok, used_c + ecost}
