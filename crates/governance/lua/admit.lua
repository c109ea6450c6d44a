-- Admission of one request: the tenant's kill switch, loop detection, every rate limit
-- (GCRA; one hash per dimension, fields `r` and `t`: the theoretical arrival times, ms, of
-- its request and its token limit, `x`: the hash's expiry, `n`: the latest `now` it has
-- seen), the tenant's and the API key's
-- budgets; only when all pass are the new arrival times, the budget reservations and the
-- job's reservation committed (a budget is added to, then taken back if that overruns it:
-- one call instead of a read and a write).
-- KEYS[1] tenant (hash), KEYS[2] loop counter, KEYS[3] tenant budget (hash),
-- KEYS[4] the job's reservation (string), KEYS[5] key budget (hash),
-- KEYS[5 + d] GCRA state of dimension d (hash: r, t, x, n), d = 1..ndim.
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
if loop_max > 0 and not redis.call('SET', KEYS[2], 1, 'PX', 60000, 'NX') then
  -- A prompt seen before this minute (a new one took one SET).
  if redis.call('INCR', KEYS[2]) > loop_max then
    return {2, 0, redis.call('PTTL', KEYS[2]), 0, 0, 0}
  end
end
local etok, ecost = tonumber(ARGV[5]), tonumber(ARGV[6])
local ndim = tonumber(ARGV[13])
local news = {}
local best, best_ratio, best_rem, best_reset = 0, 2, 0, 0
local token_dims = {}
-- Each replica stamps its own `now` before the call, so calls can reach Redis out of the
-- order of their stamps: a dimension's clock never goes back (field `n`), or a late call
-- with an earlier stamp would be refused a slot the limit still has.
local nows = {}
for d = 1, ndim do
  local b = 13 + (d - 1) * 4
  local tats = redis.call('HMGET', KEYS[5 + d], 'r', 't', 'x', 'n')
  local new = {x = tonumber(tats[3] or '0'), tau = 0}
  local now = math.max(now, tonumber(tats[4] or '0'))
  nows[d] = now
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
      if tau > new.tau then new.tau = tau end
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
-- Adds the estimate to a budget hash and returns its use after it, and whether the hash is
-- new (it then expires after its period).
local function reserve(key, ttl)
  local t = redis.call('HINCRBY', key, 'tokens', etok)
  local c = redis.call('HINCRBY', key, 'cost', ecost)
  local new_hash = t == etok and c == ecost
  if new_hash then redis.call('EXPIRE', key, ttl) end
  return t, c, new_hash
end
-- Takes a reservation back from a budget hash (a refusal after it).
local function unreserve(key, new_hash)
  if new_hash then
    redis.call('DEL', key)
  else
    redis.call('HINCRBY', key, 'tokens', 0 - etok) -- not -etok: Redis refuses "-0"
    redis.call('HINCRBY', key, 'cost', 0 - ecost)
  end
end
local used_t, used_c, fresh = 0, 0, false
local tenant_budget = btok > 0 or bcost > 0
if tenant_budget then
  used_t, used_c, fresh = reserve(KEYS[3], ARGV[8])
  local over = 0
  if btok > 0 and used_t > btok then over = 1 elseif bcost > 0 and used_c > bcost then over = 2 end
  if over > 0 then
    unreserve(KEYS[3], fresh)
    return {4, over, 0, 0, 0, 0}
  end
else
  used_t, used_c = etok, ecost
end
if ktok > 0 or kcost > 0 then
  local kt, kc, kfresh = reserve(KEYS[5], ARGV[12])
  local over = 0
  if ktok > 0 and kt > ktok then over = 3 elseif kcost > 0 and kc > kcost then over = 4 end
  if over > 0 then
    unreserve(KEYS[5], kfresh)
    if tenant_budget then unreserve(KEYS[3], fresh) end
    return {4, over, 0, 0, 0, 0}
  end
end
-- A dimension's hash must outlive its latest arrival time (past it, the state is no
-- different from none). Its field `x` is the expiry last set: only when an arrival time
-- comes within a second of it is the expiry moved, to a window past that arrival time, so
-- a busy hash takes a PEXPIRE about once a window rather than at every request.
for d = 1, ndim do
  local new, last, now = news[d], 0, nows[d]
  local fields = {'n', string.format('%d', now)}
  for f, field in ipairs({'r', 't'}) do
    if new[f] then
      fields[#fields + 1] = field
      fields[#fields + 1] = string.format('%.3f', new[f])
      if new[f] > last then last = new[f] end
    end
  end
  local expire_at = 0
  if new.x < last + 1000 then
    expire_at = math.ceil(last + new.tau) + 1000
    fields[#fields + 1] = 'x'
    fields[#fields + 1] = string.format('%d', expire_at)
  end
  redis.call('HSET', KEYS[5 + d], unpack(fields))
  if expire_at > 0 then redis.call('PEXPIRE', KEYS[5 + d], expire_at - now) end
end
if ARGV[9] == '1' then
  local budget, kbudget = '', ''
  if btok > 0 or bcost > 0 then budget = KEYS[3] end
  if ktok > 0 or kcost > 0 then kbudget = KEYS[5] end
  local r = {etok, ecost, budget, kbudget}
  for _, e in ipairs(token_dims) do table.insert(r, e) end
  redis.call('SET', KEYS[4], cjson.encode(r), 'EX', ARGV[7])
end
return {0, best, best_reset, best_rem, used_t, used_c}
