-- Registers a webhook endpoint unless its tenant already has the most it may: the count and
-- the add are one step, so parallel registrations cannot pass the cap together.
-- KEYS[1] the tenant's endpoint ids (set); KEYS[2] the endpoint (hash).
-- ARGV[1] the cap; ARGV[2] the endpoint id; ARGV[3..] the endpoint's field/value pairs.
-- Returns 1 when registered, 0 when the tenant is at its cap.
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('SADD', KEYS[1], ARGV[2])
return 1
