-- Admission of one request: the tenant's kill switch, loop detection, every rate limit
-- (GCRA; one hash per dimension, fields `r` and `t`: the theoretical arrival times, ms, of
-- its request and its token limit, `x`: the hash's expiry, `n`: the latest `now` it has
-- seen), the tenant's and the API key's budgets; only when all pass are the new arrival
-- times, the budget reservations and the job's reservation committed (a budget is added
-- to, then taken back if that overruns it: one call instead of a read and a write).
-- KEYS[1] tenant (hash), KEYS[2] loop counter, KEYS[3] tenant budget (hash),
-- KEYS[4] the job's reservation (string), KEYS[5] key budget (hash),
-- KEYS[5 + d] GCRA state of dimension d (hash: r, t, x, n), d = 1..ndim. The tenant
-- dimension's state lives in the tenant hash itself (KEYS[5 + d] == KEYS[1]): one HMGET
-- reads it with the kill switch, and that hash never expires (no `x`, no PEXPIRE). A key
-- the call does not use (the loop counter with loop detection off, a budget that is not
-- set) may be any key of the tenant's.
-- ARGV[1] now (ms, integer), ARGV[2] loop max per minute (0: off), ARGV[3] budget tokens,
-- ARGV[4] budget cost (micro-USD), ARGV[5] estimated tokens, ARGV[6] estimated cost,
-- ARGV[7] reservation TTL (s), ARGV[8] budget TTL (s), ARGV[9] '1' to record a reservation,
-- ARGV[10] key budget tokens, ARGV[11] key budget cost, ARGV[12] key budget TTL (s),
-- ARGV[13] ndim, then per dimension: T (ms per request) and tau (ms) of its request limit,
-- T (ms per token) and tau of its token limit (T = 0: that limit is off). Every number is
-- prepared by the caller. A Lua number passed to redis.call costs a printf (%.17g) inside
-- Redis, about as much as the command, so the script passes its ARGV strings and the
-- strings it read wherever it can; the only numbers it writes are the new arrival times.
-- Returns {code, i, ms, remaining, budget tokens used, budget cost used}: code 0 admitted
--   (i: the tightest limit, ms: until it resets), 1 disabled, 2 loop (ms: retry after),
--   3 rate limited by limit i (ms: retry after), 4 budget (i: 1 tenant tokens, 2 tenant
--   cost, 3 key tokens, 4 key cost). Limit i is field f (1 requests, 2 tokens) of
--   dimension d: i = 2 * (d - 1) + f.
-- The reservation is the JSON array [tokens, cost], which settle.lua reads; the counters
-- it went to are passed to settle.lua by the caller (the job's envelope carries them).
local now = tonumber(ARGV[1])
local ndim = tonumber(ARGV[13])
-- ti: the dimension whose state is in the tenant hash (0: none); ts: that state, read with
-- the kill switch.
local ti, ts = 0, false
for d = 1, ndim do
  if KEYS[5 + d] == KEYS[1] then ti = d end
end
if ti > 0 then
  ts = redis.call('HMGET', KEYS[1], 'r', 't', 'x', 'n', 'disabled')
  if ts[5] == '1' then return {1, 0, 0, 0, 0, 0} end
elseif redis.call('HGET', KEYS[1], 'disabled') == '1' then
  return {1, 0, 0, 0, 0, 0}
end
local loop_max = tonumber(ARGV[2])
if loop_max > 0 and not redis.call('SET', KEYS[2], '1', 'PX', '60000', 'NX') then
  -- A prompt seen before this minute (a new one took one SET).
  if redis.call('INCR', KEYS[2]) > loop_max then
    return {2, 0, redis.call('PTTL', KEYS[2]), 0, 0, 0}
  end
end
local etok = tonumber(ARGV[5])
local best, best_ratio, best_rem, best_reset = 0, 2, 0, 0
-- What each dimension commits, seven slots a dimension (one table for the call): its
-- clock (a number, and the string to write), the new request and token arrival times
-- (false: limit off), its hash's expiry, the latest of its arrival times and its largest
-- tau.
-- Each replica stamps its own `now` before the call, so calls can reach Redis out of the
-- order of their stamps: a dimension's clock never goes back (field `n`), or a late call
-- with an earlier stamp would be refused a slot the limit still has.
local st = {}
for d = 1, ndim do
  local b = 10 + 4 * d
  local s = ts
  if d ~= ti then s = redis.call('HMGET', KEYS[5 + d], 'r', 't', 'x', 'n') end
  -- The clock as a number and as the string it is written back as (no formatting).
  local dnow, nstr = tonumber(s[4]) or 0, s[4]
  if dnow < now then dnow, nstr = now, ARGV[1] end
  local nr, nt, last, taumax = false, false, 0, 0
  local T, tau = tonumber(ARGV[b]), tonumber(ARGV[b + 1])
  if T > 0 then
    local tat = tonumber(s[1]) or 0
    if tat < dnow then tat = dnow end
    local used = tat + T - dnow
    if used > tau then return {3, 2 * d - 1, math.ceil(used - tau), 0, 0, 0} end
    nr, last, taumax = tat + T, tat + T, tau
    local ratio = (tau - used) / tau
    if ratio < best_ratio then
      best, best_ratio = 2 * d - 1, ratio
      best_rem, best_reset = math.floor((tau - used) / T), math.ceil(used)
    end
  end
  T, tau = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  if T > 0 then
    local tat = tonumber(s[2]) or 0
    if tat < dnow then tat = dnow end
    local used = tat + etok * T - dnow
    if used > tau then return {3, 2 * d, math.ceil(used - tau), 0, 0, 0} end
    nt = tat + etok * T
    if nt > last then last = nt end
    if tau > taumax then taumax = tau end
    local ratio = (tau - used) / tau
    if ratio < best_ratio then
      best, best_ratio = 2 * d, ratio
      best_rem, best_reset = math.floor((tau - used) / T), math.ceil(used)
    end
  end
  local i = 7 * d
  st[i - 6], st[i - 5], st[i - 4], st[i - 3], st[i - 2], st[i - 1], st[i] =
    dnow, nstr, nr, nt, tonumber(s[3]) or 0, last, taumax
end
local ecost = tonumber(ARGV[6])
local btok, bcost = tonumber(ARGV[3]), tonumber(ARGV[4])
local ktok, kcost = tonumber(ARGV[10]), tonumber(ARGV[11])
-- Takes an estimate back from a budget hash (a refusal after it).
local function unreserve(key, fresh_hash)
  if fresh_hash then
    redis.call('DEL', key)
  else
    redis.call('HINCRBY', key, 'tokens', 0 - etok) -- not -etok: Redis refuses "-0"
    redis.call('HINCRBY', key, 'cost', 0 - ecost)
  end
end
-- A budget takes the estimate (HINCRBY of both fields, the ARGV strings as they came); a
-- hash the estimate made (both fields equal to it) expires after its period. An overrun
-- takes it back.
local used_t, used_c = etok, ecost
local tenant_budget = btok > 0 or bcost > 0
local fresh = false
if tenant_budget then
  used_t = redis.call('HINCRBY', KEYS[3], 'tokens', ARGV[5])
  used_c = redis.call('HINCRBY', KEYS[3], 'cost', ARGV[6])
  fresh = used_t == etok and used_c == ecost
  local over = 0
  if btok > 0 and used_t > btok then over = 1 elseif bcost > 0 and used_c > bcost then over = 2 end
  if over > 0 then
    unreserve(KEYS[3], fresh)
    return {4, over, 0, 0, 0, 0}
  end
  if fresh then redis.call('EXPIRE', KEYS[3], ARGV[8]) end
end
if ktok > 0 or kcost > 0 then
  local kt = redis.call('HINCRBY', KEYS[5], 'tokens', ARGV[5])
  local kc = redis.call('HINCRBY', KEYS[5], 'cost', ARGV[6])
  local kfresh = kt == etok and kc == ecost
  local over = 0
  if ktok > 0 and kt > ktok then over = 3 elseif kcost > 0 and kc > kcost then over = 4 end
  if over > 0 then
    unreserve(KEYS[5], kfresh)
    if tenant_budget then unreserve(KEYS[3], fresh) end
    return {4, over, 0, 0, 0, 0}
  end
  if kfresh then redis.call('EXPIRE', KEYS[5], ARGV[12]) end
end
-- A dimension's hash must outlive its latest arrival time (past it, the state is no
-- different from none). Its field `x` is the expiry last set: only when an arrival time
-- comes within a second of it is the expiry moved, to a window past that arrival time, so
-- a busy hash takes a PEXPIRE about once a window rather than at every request.
for d = 1, ndim do
  local i = 7 * d
  local key, n, nr, nt = KEYS[5 + d], st[i - 5], st[i - 4], st[i - 3]
  local last = st[i - 1]
  if d ~= ti and st[i - 2] < last + 1000 then
    local e = math.ceil(last + st[i]) + 1000
    if nr and nt then
      redis.call('HSET', key, 'n', n, 'r', nr, 't', nt, 'x', e)
    elseif nr then
      redis.call('HSET', key, 'n', n, 'r', nr, 'x', e)
    else
      redis.call('HSET', key, 'n', n, 't', nt, 'x', e)
    end
    redis.call('PEXPIRE', key, e - st[i - 6])
  elseif nr and nt then
    redis.call('HSET', key, 'n', n, 'r', nr, 't', nt)
  elseif nr then
    redis.call('HSET', key, 'n', n, 'r', nr)
  else
    redis.call('HSET', key, 'n', n, 't', nt)
  end
end
if ARGV[9] == '1' then
  redis.call('SET', KEYS[4], '[' .. ARGV[5] .. ',' .. ARGV[6] .. ']', 'EX', ARGV[7])
end
return {0, best, best_reset, best_rem, used_t, used_c}
