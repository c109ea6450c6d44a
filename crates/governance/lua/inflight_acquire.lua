-- A job's slot under its tenant's in-flight cap: renews the job's own lease, or drops
-- expired leases and takes one if the tenant holds fewer than the cap, or counts a deferral.
-- The leases are a sorted set scored by expiry, so dropping the expired ones and counting
-- the rest cost O(log n) however many the tenant holds.
-- KEYS[1] in-flight leases (sorted set: job -> lease expiry, ms), KEYS[2] deferrals (hash:
-- job -> count).
-- ARGV[1] job id, ARGV[2] cap, ARGV[3] '(' .. now (ms): the bound below which a lease has
-- expired, ARGV[4] now + lease (ms): this lease's expiry, ARGV[5] the leases' key TTL (ms,
-- two leases). The caller prepares the numbers: inside Redis a Lua number costs a printf.
-- Returns {1, deferrals, 0} acquired; {0, deferrals, jobs waiting} full.
local deferred = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    redis.call('HINCRBY', KEYS[2], ARGV[1], '1')
    redis.call('EXPIRE', KEYS[2], '86400')
    return {0, deferred + 1, redis.call('HLEN', KEYS[2])}
  end
end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, deferred, 0}
