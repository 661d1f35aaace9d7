-- Personal accounts (C1): enrollment, status, monthly credit, year-end rollover.
-- KEYS[1] = key prefix of this province (e.g. "w32:"); ARGV[1] = op; then op arguments.
-- Returns a JSON result; the same message id always returns the same result (idempotent).
local P = KEYS[1]
local op = ARGV[1]
local LEDGER = P .. 'ledger'

local function acct_key(psn) return P .. 'acct:' .. psn end

if op == 'enroll' or op == 'status' then
  -- ARGV: op, psn, version, status ('active'|'frozen'), admdvs, reason ('' = none: why it is frozen)
  local psn, version, status, admdvs, why = ARGV[2], int(ARGV[3]), ARGV[4], ARGV[5], ARGV[6] or ''
  local k = acct_key(psn)
  local current = redis.call('HGET', k, 'version')
  if current and int(current) >= version then
    return cjson.encode({ok = true, applied = false})
  end
  if redis.call('EXISTS', k) == 0 then
    if op == 'status' then
      return cjson.encode({ok = true, applied = false})  -- no account here; nothing to freeze
    end
    redis.call('HSET', k, 'cur', 0, 'hist', 0)
    redis.call('SADD', P .. 'accts', psn)
  end
  redis.call('HSET', k, 'status', status, 'version', version, 'admdvs', admdvs, 'reason', why)
  return cjson.encode({ok = true, applied = true})
end

if op == 'credit' then
  -- ARGV: op, psn, amount_fen, message_id
  local psn, amount, ref = ARGV[2], int(ARGV[3]), ARGV[4]
  local done = P .. 'done:' .. ref
  local stored = idem_get(done)
  if stored then return stored end
  local k = acct_key(psn)
  if redis.call('EXISTS', k) == 0 then return fail('NO_ACCOUNT', 'no personal account for this person here') end
  if amount <= 0 then return fail('BAD_AMOUNT', 'credit must be positive') end
  -- validated; writes follow
  hincr(k, 'cur', amount)
  hincr(P .. 'totals', 'external_net', amount)
  hincr(P .. 'totals', 'credited', amount)  -- the national audit's "credits" (money that entered the system)
  ledger(LEDGER, 'acct:' .. psn .. ':cur', amount, 'monthly_credit', ref)
  local result = cjson.encode({ok = true, applied = true, cur = int(redis.call('HGET', k, 'cur'))})
  idem_put(done, result)
  return result
end

if op == 'rollover' then
  -- ARGV: op, psn, year, message_id. Once per person and year, whatever the message id.
  local psn, year, ref = ARGV[2], ARGV[3], ARGV[4]
  local done = P .. 'rolled:' .. psn .. ':' .. year
  local stored = idem_get(done)
  if stored then return stored end
  local k = acct_key(psn)
  if redis.call('EXISTS', k) == 0 then return fail('NO_ACCOUNT', 'no personal account for this person here') end
  local cur = int(redis.call('HGET', k, 'cur'))
  redis.call('HSET', k, 'cur', 0)
  hincr(k, 'hist', cur)
  ledger(LEDGER, 'acct:' .. psn .. ':cur', -cur, 'year_rollover', ref)
  ledger(LEDGER, 'acct:' .. psn .. ':hist', cur, 'year_rollover', ref)
  local result = cjson.encode({ok = true, applied = true, moved = cur})
  redis.call('SET', done, result)  -- forever: a year rolls over once
  return result
end

return fail('BAD_OP', op)
