-- A job's slot under its tenant's in-flight cap: renews the job's own lease, or drops
-- expired leases and takes one if the tenant holds fewer than the cap, or counts a deferral.
-- KEYS[1] in-flight leases (hash: job -> expiry ms), KEYS[2] deferrals (hash: job -> count).
-- ARGV[1] job id, ARGV[2] cap, ARGV[3] now (ms), ARGV[4] lease (ms).
-- Returns {1, deferrals, 0} acquired; {0, deferrals, jobs waiting} full.
local now = tonumber(ARGV[3])
local deferred = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[4]))
  return {1, deferred, 0}
end
local all = redis.call('HGETALL', KEYS[1])
local live = 0
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now then redis.call('HDEL', KEYS[1], all[i]) else live = live + 1 end
end
if live >= tonumber(ARGV[2]) then
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  redis.call('EXPIRE', KEYS[2], 86400)
  return {0, deferred + 1, redis.call('HLEN', KEYS[2])}
end
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[4]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
return {1, deferred, 0}
