-- An operator's replay of a dead-lettered job, outside the forward-only rule: `failed` or
-- `expired` becomes `queued`, the error, end fields and failed attempts are cleared (the
-- history keeps them), and a `replay` event says who did it. Repeating a replay with the same token applies
-- again without a second reset.
-- KEYS[1] record (hash), KEYS[2] history (list).
-- ARGV[1] now (ms), ARGV[2] actor, ARGV[3] TTL (s), ARGV[4] replay token.
-- Returns {1, replays} applied; {0, current} refused; {0, ''} no record.
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if cur == 'queued' and redis.call('HGET', KEYS[1], 'replay_token') == ARGV[4] then
  return {1, tostring(redis.call('HGET', KEYS[1], 'replays'))}
end
if cur ~= 'failed' and cur ~= 'expired' then return {0, cur} end
local n = redis.call('HINCRBY', KEYS[1], 'replays', 1)
redis.call('HDEL', KEYS[1], 'error', 'failed_at', 'expired_at', 'in_progress_at', 'result', 'failures')
redis.call('HSET', KEYS[1], 'status', 'queued', 'queued_at', ARGV[1], 'replay_token', ARGV[4])
redis.call('RPUSH', KEYS[2], cjson.encode({type = 'replay', from = cur, by = ARGV[2], replay = n, at = tonumber(ARGV[1])}))
redis.call('RPUSH', KEYS[2], cjson.encode({type = 'status', status = 'queued', at = tonumber(ARGV[1])}))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, tostring(n)}
