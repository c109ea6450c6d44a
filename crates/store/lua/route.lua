-- The model router's decision, recorded on an existing job and in its history.
-- KEYS[1] record (hash), KEYS[2] history (list).
-- ARGV[1] the route (a JSON object), ARGV[2] now (ms).
-- Returns 1 recorded, 0 no record.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'route', ARGV[1])
local ev = cjson.decode(ARGV[1])
ev.type = 'route'
ev.at = tonumber(ARGV[2])
redis.call('RPUSH', KEYS[2], cjson.encode(ev))
return 1
