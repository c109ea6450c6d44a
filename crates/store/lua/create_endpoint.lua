-- Adds a webhook endpoint's id to its tenant's set unless the tenant already has the most it
-- may: the count and the add are one step, so parallel registrations cannot pass the cap
-- together. (The endpoint's hash is on another cluster slot; the caller writes it first and
-- deletes it when this refuses.)
-- KEYS[1] the tenant's endpoint ids (set).
-- ARGV[1] the cap; ARGV[2] the endpoint id.
-- Returns 1 when added, 0 when the tenant is at its cap.
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SADD', KEYS[1], ARGV[2])
return 1
