-- Settlement of a job's reservation against its actual usage, exactly once: takes and
-- deletes the reservation, adds the difference to the budgets it reserved in, and moves each
-- token limit's arrival time by the difference.
-- KEYS[1] the job's reservation (hash: tokens, cost, budget, kbudget, rl).
-- ARGV[1] actual tokens, ARGV[2] actual cost (micro-USD), ARGV[3] now (ms).
-- Returns 1 settled, 0 nothing to settle (already settled or never reserved).
local r = redis.call('HGETALL', KEYS[1])
if #r == 0 then return 0 end
local h = {}
for i = 1, #r, 2 do h[r[i]] = r[i + 1] end
redis.call('DEL', KEYS[1])
local now = tonumber(ARGV[3])
local dt = tonumber(ARGV[1]) - tonumber(h.tokens)
local dc = tonumber(ARGV[2]) - tonumber(h.cost)
for _, b in ipairs({h.budget or '', h.kbudget or ''}) do
  if b ~= '' and redis.call('EXISTS', b) == 1 then
    redis.call('HINCRBY', b, 'tokens', dt)
    redis.call('HINCRBY', b, 'cost', dc)
  end
end
for _, e in ipairs(cjson.decode(h.rl)) do
  local tat = tonumber(redis.call('GET', e[1]) or '0')
  if tat > 0 then
    local new = tat + dt * e[2]
    if new > now then
      redis.call('SET', e[1], tostring(new), 'PX', math.ceil(new - now) + 1000)
    else
      redis.call('DEL', e[1])
    end
  end
end
return 1
