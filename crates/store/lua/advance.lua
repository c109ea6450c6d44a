-- A transition of a record that exists, with everything prepared by the caller: the same
-- rule as transition.lua. The TTL is renewed when the job ends (the record was created with
-- it).
-- KEYS[1] record (hash), KEYS[2] history (list).
-- ARGV[1] new status, ARGV[2] now (ms), ARGV[3] the history event (JSON), ARGV[4] TTL (s),
-- ARGV[5..] field/value pairs.
-- may_become(cur, new) (prepended by the loader): the status rule, generated from
--   `JobStatus::may_become`.
-- Returns {1, new} applied; {0, current} refused; {-1, ''} no record (the caller falls back
--   to transition.lua).
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then
  return {-1, ''}
end
local new = ARGV[1]
if not may_become(cur, new) then
  return {0, cur}
end
redis.call('HSET', KEYS[1], 'status', new, new .. '_at', ARGV[2], unpack(ARGV, 5))
redis.call('RPUSH', KEYS[2], ARGV[3])
if new ~= 'in_progress' then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return {1, new}
