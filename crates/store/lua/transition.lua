-- The full transition of a job record: checks the status rule, creates a missing record with
-- its descriptive fields, appends the status event(s) and renews the TTL.
-- KEYS[1] record (hash), KEYS[2] history (list), KEYS[3] tombstone of a rejected publish.
-- ARGV[1] new status, ARGV[2] now (ms), ARGV[3] TTL (s),
-- ARGV[4] nbase, then nbase field/value pairs written only when the record is created
--   (nbase 0: only move an existing record), then nset, then nset field/value pairs.
-- may_become(cur, new) (prepended by the loader): the status rule, generated from
--   `JobStatus::may_become`.
-- Returns {1, new} applied; {0, current} refused; {0, 'rejected'} tombstoned;
--   {-1, ''} no record and nbase 0.
local new = ARGV[1]
local now = ARGV[2]
local ttl = ARGV[3]
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur and tonumber(ARGV[4]) == 0 then
  return {-1, ''}
end
if not cur and redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, 'rejected'}
end
if cur then
  if not may_become(cur, new) then
    return {0, cur}
  end
end
local i = 5
local nbase = tonumber(ARGV[4])
local set = {'status', new, new .. '_at', now}
if not cur then
  for j = i, i + 2 * nbase - 1 do set[#set + 1] = ARGV[j] end
end
i = i + 2 * nbase
local nset = tonumber(ARGV[i])
i = i + 1
local attempts
for j = i, i + 2 * nset - 1, 2 do
  set[#set + 1] = ARGV[j]
  set[#set + 1] = ARGV[j + 1]
  if ARGV[j] == 'attempts' then attempts = tonumber(ARGV[j + 1]) end
end
if not cur and new ~= 'queued' then
  local created = now
  for j = 5, 4 + 2 * nbase, 2 do
    if ARGV[j] == 'created_at' then created = ARGV[j + 1] end
  end
  set[#set + 1] = 'queued_at'
  set[#set + 1] = created
  redis.call('RPUSH', KEYS[2], cjson.encode({type = 'status', status = 'queued', at = tonumber(created)}))
end
redis.call('HSET', KEYS[1], unpack(set))
local ev = {type = 'status', status = new, at = tonumber(now)}
if new == 'in_progress' then
  ev.attempt = attempts or tonumber(redis.call('HGET', KEYS[1], 'attempts'))
end
redis.call('RPUSH', KEYS[2], cjson.encode(ev))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return {1, new}
