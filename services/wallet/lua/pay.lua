-- Settlement payment and its exact reversal (S1, S2, S6, S8, W5, W6, C2).
-- KEYS[1] = province prefix. Everything is read and decided before the first write, so a refusal or a
-- dry run (2206) writes nothing, and concurrent payments against one grantor are serialised by Redis
-- itself: no interleaving can overdraw (S8).
local P = KEYS[1]
local op = ARGV[1]
local LEDGER = P .. 'ledger'

local function hgetint(k, f) return int(redis.call('HGET', k, f)) end
local function active_acct(psn)
  local k = P .. 'acct:' .. psn
  return redis.call('HGET', k, 'status') == 'active', k
end

if op == 'pay' then
  -- ARGV: op, payment_id, psn, amount_fen, dry_run ('1'|'0'), plan JSON, message_id
  local pay_id, psn, amount, dry_run, plan, ref = ARGV[2], ARGV[3], int(ARGV[4]), ARGV[5] == '1',
      cjson.decode(ARGV[6]), ARGV[7]
  local pay_key = P .. 'pay:' .. pay_id
  local stored = redis.call('GET', pay_key)
  if stored then return stored end  -- replay: the stored result, nothing moves twice
  if amount < 0 then return fail('INVALID_PLAN', 'negative amount') end

  local remaining = amount
  local parts = {}
  local function take(source, owner, bucket, avail, binding_id, lot_id, balance)
    local t = math.min(avail, remaining)
    if t > 0 then
      remaining = remaining - t
      parts[#parts + 1] = {source = source, owner_psn_no = owner, bucket = bucket, amount_fen = t,
                           binding_id = binding_id, lot_id = lot_id, balance = balance}
    end
    return t
  end

  -- 1. own account: current year, then prior years (S1)
  local own_ok, own_key = active_acct(psn)
  if plan.use_own and own_ok then
    take('own', psn, 'cur', hgetint(own_key, 'cur'), nil, nil, 'acct:' .. psn .. ':cur')
    take('own', psn, 'hist', hgetint(own_key, 'hist'), nil, nil, 'acct:' .. psn .. ':hist')
  end

  -- 2. grantors in the recipient's order (B7); single mode uses at most one (S1); funding per B6/S2.
  -- Every source is re-checked against this deployment's own view: a dissolved binding, a binding
  -- for someone else or a frozen grantor contributes nothing.
  local grantors_used = 0
  for _, g in ipairs(plan.grantors or {}) do
    if remaining == 0 then break end
    if plan.multi_grantor_mode == 'single' and grantors_used >= 1 then break end
    local bk = P .. 'bind:' .. g.binding_id
    local b = redis.call('HMGET', bk, 'status', 'recipient', 'grantor', 'kind', 'mode', 'earmark')
    local g_ok, g_key = active_acct(g.grantor_psn_no)
    if b[1] == 'active' and b[2] == psn and b[3] == g.grantor_psn_no and b[4] == 'mutual_aid' and g_ok then
      local before = remaining
      if b[5] == 'quota' then
        take('mutual_aid', b[3], 'quota', int(b[6]), g.binding_id, nil, 'bind:' .. g.binding_id .. ':earmark')
      elseif b[5] == 'historical_only' then
        take('mutual_aid', b[3], 'hist', hgetint(g_key, 'hist'), g.binding_id, nil, 'acct:' .. b[3] .. ':hist')
      else -- full_balance
        take('mutual_aid', b[3], 'cur', hgetint(g_key, 'cur'), g.binding_id, nil, 'acct:' .. b[3] .. ':cur')
        take('mutual_aid', b[3], 'hist', hgetint(g_key, 'hist'), g.binding_id, nil, 'acct:' .. b[3] .. ':hist')
      end
      if remaining < before then grantors_used = grantors_used + 1 end
    end
  end

  -- 3. wallet lots, oldest first (W5, W6)
  if plan.use_wallet and remaining > 0 then
    for _, lot_id in ipairs(redis.call('LRANGE', P .. 'lots:' .. psn, 0, -1)) do
      if remaining == 0 then break end
      local lk = P .. 'lot:' .. lot_id
      local l = redis.call('HMGET', lk, 'status', 'amount', 'sender')
      if l[1] == 'active' then
        take('wallet', l[3], 'lot', int(l[2]), nil, lot_id, 'lot:' .. lot_id)
      end
    end
  end

  local own_pay, mulaid_pay, wallet_pay = 0, 0, 0
  for _, part in ipairs(parts) do
    if part.source == 'own' then own_pay = own_pay + part.amount_fen
    elseif part.source == 'mutual_aid' then mulaid_pay = mulaid_pay + part.amount_fen
    else wallet_pay = wallet_pay + part.amount_fen end
  end
  local own_after = 0
  if own_ok then own_after = hgetint(own_key, 'cur') + hgetint(own_key, 'hist') - own_pay end
  local result = {ok = true, payment_id = pay_id, psn_no = psn, amount_fen = amount,
                  acct_pay_fen = own_pay + mulaid_pay, mulaid_pay_fen = mulaid_pay, wallet_pay_fen = wallet_pay,
                  cash_fen = remaining, own_balance_after_fen = own_after, parts = parts, dry_run = dry_run}
  if dry_run then return cjson.encode(result) end

  -- validated and decided; writes follow
  local function apply(part, sign, reason)
    local d = sign * part.amount_fen
    if part.bucket == 'quota' then
      hincr(P .. 'bind:' .. part.binding_id, 'earmark', d)
    elseif part.bucket == 'lot' then
      hincr(P .. 'lot:' .. part.lot_id, 'amount', d)
    else
      hincr(P .. 'acct:' .. part.owner_psn_no, part.bucket, d)
    end
    ledger(LEDGER, part.balance, d, reason, ref)
  end
  for _, part in ipairs(parts) do apply(part, -1, 'settlement_payment') end
  hincr(P .. 'totals', 'external_net', -(amount - remaining))
  hincr(P .. 'totals', 'paid', amount - remaining)  -- to institutions: money that left the system
  result.status = 'paid'
  local encoded = cjson.encode(result)
  redis.call('SET', pay_key, encoded)
  return encoded
end

if op == 'reverse' then
  -- ARGV: op, payment_id, psn, message_id. Returns every fen to exactly where it came from (S6).
  local pay_id, psn, ref = ARGV[2], ARGV[3], ARGV[4]
  local rev_key = P .. 'rev:' .. pay_id
  local stored = redis.call('GET', rev_key)
  if stored then return stored end
  local pay_key = P .. 'pay:' .. pay_id
  local raw = redis.call('GET', pay_key)
  local result
  if not raw then
    -- Never arrived (yet): void it in advance so a late payment command is refused (2601, timeouts).
    redis.call('SET', pay_key, cjson.encode({ok = false, reason = 'VOIDED', payment_id = pay_id, psn_no = psn,
                                               detail = 'payment was reversed before it arrived'}))
    result = {ok = true, payment_id = pay_id, psn_no = psn, outcome = 'voided_before_payment', refunded_fen = 0,
              parts = {}}
  else
    local paid = cjson.decode(raw)
    local refunded = 0
    local parts = {}
    local to_sender = {}
    if paid.ok and not paid.dry_run then
      for _, part in ipairs(paid.parts) do
        local d = part.amount_fen
        local balance = part.balance
        if part.bucket == 'quota' then
          local bk = P .. 'bind:' .. part.binding_id
          if redis.call('HGET', bk, 'status') == 'active' then
            hincr(bk, 'earmark', d)
          else
            -- binding dissolved meanwhile: the quota has been released, so the money goes to the grantor (S6)
            balance = 'acct:' .. part.owner_psn_no .. ':hist'
            hincr(P .. 'acct:' .. part.owner_psn_no, 'hist', d)
          end
        elseif part.bucket == 'lot' and redis.call('HGET', P .. 'lot:' .. part.lot_id, 'status') ~= 'active' then
          -- the lot went back to its sender meanwhile (W6), so this refund follows it: nothing stays here
          local lk = P .. 'lot:' .. part.lot_id
          to_sender[#to_sender + 1] = {lot_id = part.lot_id, sender = redis.call('HGET', lk, 'sender'),
                                       sender_prov = redis.call('HGET', lk, 'sender_prov'), amount_fen = d}
          hincr(P .. 'totals', 'external_net', -d)
          hincr(P .. 'rout', 'refund:' .. pay_id .. ':' .. part.lot_id, d)  -- in flight to the sender's province
          balance = nil
        elseif part.bucket == 'lot' then
          hincr(P .. 'lot:' .. part.lot_id, 'amount', d)
        else
          hincr(P .. 'acct:' .. part.owner_psn_no, part.bucket, d)
        end
        if balance then ledger(LEDGER, balance, d, 'settlement_reversal', ref) end
        refunded = refunded + d
        part.balance = balance
        parts[#parts + 1] = part
      end
      hincr(P .. 'totals', 'external_net', refunded)
      hincr(P .. 'totals', 'paid', -refunded)
    end
    result = {ok = true, payment_id = pay_id, psn_no = psn, outcome = 'refunded', refunded_fen = refunded,
              parts = parts, to_sender = to_sender}
  end
  local encoded = cjson.encode(result)
  redis.call('SET', rev_key, encoded)
  return encoded
end

return fail('BAD_OP', op)
