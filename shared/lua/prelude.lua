-- Shared prelude of every money script (shared/redis_store.py prepends it).
-- Rules every script follows: validate everything first, write only after validation has passed
-- (a Lua error after a write does not roll back), store the result under the idempotency key,
-- append an immutable ledger entry for each balance change.

-- Stored result of an already-applied request, or false.
local function idem_get(key)
  return redis.call('GET', key)
end

-- Kept 35 days: longer than Kafka's retention (7 days by default), so any redelivery still finds it, yet
-- bounded so idempotency records do not grow forever. Facts that must hold forever (a payment, a year's
-- rollover) are stored under their own keys without expiry.
local IDEMPOTENCY_TTL_S = 35 * 86400

local function idem_put(key, result_json)
  redis.call('SET', key, result_json, 'EX', IDEMPOTENCY_TTL_S)
end

-- One immutable ledger entry per balance change. `balance` names the balance that moved
-- (acct:<psn>:cur, acct:<psn>:hist, bind:<id>:earmark, lot:<id>, xfer:<id>:hold); `delta` is signed
-- integer fen; `reason` says why and `ref` which request caused it (C2).
local function ledger(stream, balance, delta, reason, ref)
  if delta ~= 0 then
    redis.call('XADD', stream, '*', 'balance', balance, 'delta', string.format('%d', delta),
               'reason', reason, 'ref', ref)
  end
end

local function fail(code, detail)
  return cjson.encode({ok = false, reason = code, detail = detail or ''})
end

local function int(value)
  local n = tonumber(value or 0) or 0
  if n ~= math.floor(n) then error('non-integer amount ' .. tostring(value)) end
  return n
end

-- HINCRBY with integer formatting: Lua numbers are doubles, and Redis refuses "-0" and "1e+15".
local function hincr(key, field, delta)
  if delta ~= 0 then
    redis.call('HINCRBY', key, field, string.format('%d', delta))
  end
end

-- C1 in any order: the newest suspension or end heard for a person is kept on their view (`<prefix>person:<psn>`)
-- whatever else was heard, even before their account exists or after a newer enrolment (accounts.lua `status`).
-- An account that opens or arrives for anything older opens frozen at it, as hearing everything in version order
-- would have left it.
local function record_freeze(prefix, psn, version, why, admdvs)
  local key = prefix .. 'person:' .. psn
  local known = redis.call('HGET', key, 'freeze_ver')
  if not known or int(known) < version then
    redis.call('HSET', key, 'freeze_ver', version, 'freeze_why', why, 'freeze_admdvs', admdvs)
  end
end

-- The newest freeze if it is newer than `version`: its version, why and region; nil otherwise.
local function freeze_after(prefix, psn, version)
  local f = redis.call('HMGET', prefix .. 'person:' .. psn, 'freeze_ver', 'freeze_why', 'freeze_admdvs')
  if f[1] and int(f[1]) > version then return int(f[1]), f[2] or '', f[3] end
  return nil
end
