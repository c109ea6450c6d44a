-- The `queued` record of a new job, with everything prepared by the caller. Writes nothing
-- when the record exists (a worker got there first: a write that lands late must not move it
-- back) or the job was rejected.
-- KEYS[1] record (hash), KEYS[2] history (list), KEYS[3] tombstone of a rejected publish.
-- ARGV[1] TTL (s), ARGV[2] the history event (JSON), ARGV[3..] field/value pairs.
-- Returns 1 created, 0 nothing written.
if redis.call('EXISTS', KEYS[1], KEYS[3]) > 0 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
