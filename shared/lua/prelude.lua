-- Shared prelude of every money script (shared/redis_store.py prepends it).
-- Rules every script follows: validate everything first, write only after validation has passed
-- (a Lua error after a write does not roll back), store the result under the idempotency key,
-- append an immutable ledger entry for each balance change.

-- Stored result of an already-applied request, or false.
local function idem_get(key)
  return redis.call('GET', key)
end

local function idem_put(key, result_json)
  redis.call('SET', key, result_json)
end

-- One immutable ledger entry per balance change. `delta` is signed integer fen.
local function ledger(stream, psn, bucket, delta, reason, ref, extra)
  redis.call('XADD', stream, '*', 'psn', psn, 'bucket', bucket, 'delta', tostring(delta),
             'reason', reason, 'ref', ref, 'extra', extra or '')
end

local function fail(code, detail)
  return cjson.encode({ok = false, reason = code, detail = detail or ''})
end

local function int(value)
  local n = tonumber(value or 0) or 0
  if n ~= math.floor(n) then error('non-integer amount ' .. tostring(value)) end
  return n
end
