-- A worker's `in_progress` transition of a record that exists, numbering the attempt: the
-- attempt is one more than the attempts recorded as failed (`failures`), not the broker's
-- delivery count, so a redelivery after a worker crash or a store outage runs the same
-- attempt again.
-- KEYS[1] record (hash), KEYS[2] history (list).
-- ARGV[1] now (ms).
-- may_become(cur, new) (prepended by the loader): the status rule, generated from
--   `JobStatus::may_become`.
-- Returns {1, attempt} applied; {0, current} refused; {-1, ''} no record (the caller falls
--   back to transition.lua).
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then
  return {-1, ''}
end
if not may_become(cur, 'in_progress') then
  return {0, cur}
end
local attempt = (tonumber(redis.call('HGET', KEYS[1], 'failures')) or 0) + 1
redis.call('HSET', KEYS[1], 'status', 'in_progress', 'in_progress_at', ARGV[1], 'attempts', attempt)
redis.call('RPUSH', KEYS[2], cjson.encode({type = 'status', status = 'in_progress', at = tonumber(ARGV[1]), attempt = attempt}))
return {1, tostring(attempt)}
