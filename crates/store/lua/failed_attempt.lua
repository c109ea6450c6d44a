-- Records that attempt ARGV[1] of a job failed (retryably): the next start runs attempt
-- ARGV[1] + 1. Monotonic and idempotent, so a repeated or late write changes nothing; a
-- missing record is not created (it would have no TTL).
-- KEYS[1] record (hash).
-- ARGV[1] the failed attempt (1-based).
-- Returns the failures now recorded (0: no record).
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures')) or 0
local attempt = tonumber(ARGV[1])
if attempt > failures then
  redis.call('HSET', KEYS[1], 'failures', attempt)
  failures = attempt
end
return failures
