-- Quota earmarks from binding events (B6, C3). KEYS[1] = province prefix; ARGV[1] = op.
-- An earmark takes the grantor's prior-years balance first, then current-year; released quota returns
-- to prior-years (a documented decision: an earmark outlives the year it was made in).
local P = KEYS[1]
local op = ARGV[1]
local LEDGER = P .. 'ledger'

local function take_spendable(grantor, amount, ref, reason)
  local k = P .. 'acct:' .. grantor
  local hist = int(redis.call('HGET', k, 'hist'))
  local from_hist = math.min(hist, amount)
  local from_cur = amount - from_hist
  hincr(k, 'hist', -from_hist)
  hincr(k, 'cur', -from_cur)
  ledger(LEDGER, 'acct:' .. grantor .. ':hist', -from_hist, reason, ref)
  ledger(LEDGER, 'acct:' .. grantor .. ':cur', -from_cur, reason, ref)
end

local function spendable(grantor)
  local k = P .. 'acct:' .. grantor
  if redis.call('EXISTS', k) == 0 then return nil end
  if redis.call('HGET', k, 'status') ~= 'active' then return nil end
  return int(redis.call('HGET', k, 'cur')) + int(redis.call('HGET', k, 'hist'))
end

local function release(bk, b_id, grantor, amount, ref, reason)
  if amount <= 0 then return end
  hincr(bk, 'earmark', -amount)
  hincr(P .. 'acct:' .. grantor, 'hist', amount)
  ledger(LEDGER, 'bind:' .. b_id .. ':earmark', -amount, reason, ref)
  ledger(LEDGER, 'acct:' .. grantor .. ':hist', amount, reason, ref)
end

local done = P .. 'done:' .. ARGV[2]
local stored = idem_get(done)
if stored then return stored end
local result

if op == 'bind' then
  -- ARGV: op, message_id, binding_id, grantor, recipient, kind, funding_mode, quota_fen (or '')
  local b_id, grantor, recipient, kind, mode = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
  local quota = ARGV[8] ~= '' and int(ARGV[8]) or 0
  local bk = P .. 'bind:' .. b_id
  if redis.call('EXISTS', bk) == 1 then
    result = cjson.encode({ok = true, applied = false})
  else
    local outcome = {ok = true, applied = true, earmarked = 0, quota = quota}
    if mode == 'quota' and kind == 'mutual_aid' then
      local avail = spendable(grantor)
      if avail == nil then
        outcome = {ok = false, reason = 'NO_ACCOUNT', spendable = 0, quota = quota}
      elseif avail < quota then
        outcome = {ok = false, reason = 'INSUFFICIENT_BALANCE', spendable = avail, quota = quota}
      end
    end
    -- validated; writes follow. A refused quota is not recorded: nothing promised, nothing held (the binding
    -- service dissolves the binding on the refusal; a later quota change starts from zero, not from a quota
    -- that was never held).
    redis.call('HSET', bk, 'grantor', grantor, 'recipient', recipient, 'kind', kind, 'mode', mode,
               'status', 'active', 'quota', outcome.ok and quota or 0, 'earmark', 0)
    redis.call('SADD', P .. 'binds', b_id)
    if outcome.ok and mode == 'quota' and kind == 'mutual_aid' and quota > 0 then
      take_spendable(grantor, quota, ARGV[2], 'quota_earmark')
      redis.call('HSET', bk, 'earmark', quota)
      ledger(LEDGER, 'bind:' .. b_id .. ':earmark', quota, 'quota_earmark', ARGV[2])
      outcome.earmarked = quota
    end
    result = cjson.encode(outcome)
  end
elseif op == 'quota' then
  -- ARGV: op, message_id, binding_id, new_quota_fen
  local b_id, new_quota = ARGV[3], int(ARGV[4])
  local bk = P .. 'bind:' .. b_id
  if redis.call('HGET', bk, 'status') ~= 'active' then
    result = fail('NOT_ACTIVE', 'binding not active here')
  else
    local grantor = redis.call('HGET', bk, 'grantor')
    local old_quota = int(redis.call('HGET', bk, 'quota'))
    local earmark = int(redis.call('HGET', bk, 'earmark'))
    local used = math.max(0, old_quota - earmark)
    local target = math.max(0, new_quota - used)  -- unused quota that should be held after the change
    local delta = target - earmark
    local avail = spendable(grantor) or 0
    if delta > 0 and avail < delta then
      result = cjson.encode({ok = false, reason = 'INSUFFICIENT_BALANCE', spendable = avail, quota = new_quota})
    else
      if delta > 0 then
        take_spendable(grantor, delta, ARGV[2], 'quota_change')
        hincr(bk, 'earmark', delta)
        ledger(LEDGER, 'bind:' .. b_id .. ':earmark', delta, 'quota_change', ARGV[2])
      else
        release(bk, b_id, grantor, -delta, ARGV[2], 'quota_change')
      end
      redis.call('HSET', bk, 'quota', new_quota)
      result = cjson.encode({ok = true, applied = true, earmarked = target, quota = new_quota})
    end
  end
elseif op == 'dissolve' then
  -- ARGV: op, message_id, binding_id. Unused quota returns to the grantor (B5/B6).
  local b_id = ARGV[3]
  local bk = P .. 'bind:' .. b_id
  if redis.call('HGET', bk, 'status') ~= 'active' then
    result = cjson.encode({ok = true, applied = false, released = 0})
  else
    local grantor = redis.call('HGET', bk, 'grantor')
    local earmark = int(redis.call('HGET', bk, 'earmark'))
    release(bk, b_id, grantor, earmark, ARGV[2], 'binding_dissolved')
    redis.call('HSET', bk, 'status', 'dissolved')
    result = cjson.encode({ok = true, applied = true, released = earmark})
  end
else
  return fail('BAD_OP', op)
end
idem_put(done, result)
return result
