-- Gives up an idempotency claim, only if it is still the claimant's.
-- KEYS[1] the claim (string: body hash and job id).
-- ARGV[1] the claim's value as the claimant stored it.
-- Returns 1 released, 0 the claim is gone or someone else's.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
