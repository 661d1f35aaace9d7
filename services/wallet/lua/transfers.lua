-- Wallets and the cross-province transfer saga (W1–W6). KEYS[1] = province prefix; ARGV[1] = op.
-- Source-side state  xfer:<id>  : held → posted | voided   (the only place the decision is made)
-- Destination state  dxfer:<id> : offered → accepting → accepted | returned ; or refused
-- Wallet relationships are kept by binding id, never by the two people alone: the same two may bind, unbind and
-- bind again, and a late copy of the first relationship's events must not touch the second (W3, W6).
--   wrb:<sender>  recipient → binding id the sender may transfer under (sender's province)
--   wended        binding ids of relationships that ended (permanent: an end is never undone)
--   wrel:<sender> / wend:<holder>: the pair-keyed forms from before binding ids were kept; still read for
--   relationships and transfers made then (their binding id is '', which matches any binding of the pair)
-- Every op is idempotent: a repeated call returns the stored outcome and moves nothing.
local P = KEYS[1]
local op = ARGV[1]
local LEDGER = P .. 'ledger'

local function h(k, f) return redis.call('HGET', k, f) end

-- W6: `holder`'s unspent lots leave for their senders (`sender` '': every sender's; `binding` '': any, and a lot
-- made before binding ids were kept matches any): each is in flight under `batch` until the sender's province
-- receives it. Returns what left, for the caller to send (the callers store it under their batch: idempotent).
local function send_lots_home(holder, sender, batch, binding)
  local returns = {}
  for _, lot_id in ipairs(redis.call('LRANGE', P .. 'lots:' .. holder, 0, -1)) do
    local lk = P .. 'lot:' .. lot_id
    local amount = int(h(lk, 'amount'))
    local lot_binding = h(lk, 'binding') or ''
    if h(lk, 'status') == 'active' and (sender == '' or h(lk, 'sender') == sender)
        and (binding == '' or lot_binding == '' or lot_binding == binding) then
      redis.call('HSET', lk, 'status', 'returned', 'amount', 0)
      if amount > 0 then
        hincr(P .. 'totals', 'external_net', -amount)
        hincr(P .. 'rout', batch .. ':' .. lot_id, amount)  -- in flight until the sender's province receives it
        ledger(LEDGER, 'lot:' .. lot_id, -amount, 'lot_returned', batch)
        returns[#returns + 1] = {lot_id = lot_id, sender = h(lk, 'sender'), sender_prov = h(lk, 'sender_prov'),
                                 amount_fen = amount}
      end
    end
  end
  return returns
end

if op == 'open' then
  -- ARGV: op, psn, admdvs, opened_ms (business time). Also kept: the holder's version here as it opens, so an
  -- arrival from another province heard later can tell a wallet from before the holder left (op left).
  local wk = P .. 'wallet:' .. ARGV[2]
  if h(wk, 'status') ~= 'active' then
    redis.call('HSET', wk, 'status', 'active', 'admdvs', ARGV[3])
    if ARGV[4] then
      redis.call('HSET', wk, 'opened_ms', ARGV[4], 'opened_ver', int(h(P .. 'person:' .. ARGV[2], 'version')))
    end
  end
  return cjson.encode({ok = true})
end

if op == 'left' or op == 'close_and_return' then
  -- ARGV: op, psn, reason, batch; for left also arrival_version, arrival_ms; for close_and_return optionally
  -- the move's business time (a move older than the account, which came home: see below). The wallet closes and
  -- its lots go home (W1, W6), in one step, answered the same on every delivery of the message (its batch):
  -- whatever happened to the wallet since (reopened, say), a redelivery sends the same lots again and moves
  -- nothing twice.
  -- close_and_return: the holder moved away. left: the holder arrived from another province, so they had left
  -- this one; a wallet opened before both the arrival's version and its business time belonged to the stay that
  -- ended, and closes as the move out would have, had it been heard first. A wallet opened after the return (the
  -- return heard late) stays; one opened before opened_* were kept is left alone.
  local psn, why, batch = ARGV[2], ARGV[3], ARGV[4]
  local done = P .. 'done:' .. batch
  local stored = idem_get(done)
  if stored then return stored end
  local wk = P .. 'wallet:' .. psn
  local w = redis.call('HMGET', wk, 'status', 'opened_ver', 'opened_ms')
  local closing = w[1] == 'active'
  if op == 'left' then
    closing = closing and w[2] ~= false and int(w[2]) < int(ARGV[5]) and int(w[3]) < int(ARGV[6])
  elseif ARGV[5] then
    -- close_and_return with the move's business time: the move is older than the account, which came home
    -- already; only a wallet opened before the move was the ended stay's (opened before opened_* were kept: 0)
    closing = closing and int(w[3]) < int(ARGV[5])
  end
  local returns = {}
  if closing then
    redis.call('HSET', wk, 'status', 'closed', 'reason', why)
    returns = send_lots_home(psn, '', batch, '')
  elseif op == 'close_and_return' and w[1] == 'closed' then
    returns = send_lots_home(psn, '', batch, '')  -- closed meanwhile: nothing of the holder's stays here
  end
  local r = cjson.encode({ok = true, closed = closing, returns = returns})
  idem_put(done, r)
  return r
end

if op == 'close' then
  -- ARGV: op, psn, reason. W6/B5: after death or termination the wallet takes and pays nothing any more; its
  -- lots go back to their senders (op return_lots), offers to it are refused and expire back to their senders.
  local wk = P .. 'wallet:' .. ARGV[2]
  if redis.call('EXISTS', wk) == 1 then redis.call('HSET', wk, 'status', 'closed', 'reason', ARGV[3]) end
  return cjson.encode({ok = true})
end

-- The sender's active wallet lots, oldest first, as {lot_id, available}.
local function lots_of(psn)
  local out = {}
  for _, lot_id in ipairs(redis.call('LRANGE', P .. 'lots:' .. psn, 0, -1)) do
    local lk = P .. 'lot:' .. lot_id
    if h(lk, 'status') == 'active' and int(h(lk, 'amount')) > 0 then
      out[#out + 1] = {lot_id = lot_id, available = int(h(lk, 'amount'))}
    end
  end
  return out
end

if op == 'request' then
  -- ARGV: op, id, from, to, to_prov, amount, day, expires_ms, max_per_day, message_id, source, refused, detail
  -- `refused` is a refusal the caller decided before (consent, hours, amount, destination): stored here like
  -- every other outcome, so a redelivered request gets the same answer whatever the clock says by then.
  local id, from, to, to_prov, amount, day, exp_ms, max_day, ref, source, refused, detail =
      ARGV[2], ARGV[3], ARGV[4], ARGV[5], int(ARGV[6]), ARGV[7], int(ARGV[8]), int(ARGV[9]), ARGV[10], ARGV[11],
      ARGV[12] or '', ARGV[13] or ''
  local xk = P .. 'xfer:' .. id
  local stored = h(xk, 'result')
  if stored then return stored end
  local ak = P .. 'acct:' .. from
  local available = 0
  local lots = {}
  local reason
  local binding = h(P .. 'wrb:' .. from, to)
  if not binding and redis.call('SISMEMBER', P .. 'wrel:' .. from, to) == 1 then binding = '' end
  if refused ~= '' then reason = refused
  elseif source == 'wallet' then
    if h(P .. 'wallet:' .. from, 'status') ~= 'active' then reason = 'NO_WALLET' end
    lots = lots_of(from)
    for _, l in ipairs(lots) do available = available + l.available end
  elseif h(ak, 'status') ~= 'active' then reason = 'NO_ACCOUNT'
  else available = int(h(ak, 'cur')) + int(h(ak, 'hist')) end
  if reason then
  elseif not binding then reason = 'NO_RELATIONSHIP'
  elseif int(redis.call('GET', P .. 'xcount:' .. from .. ':' .. day)) >= max_day then reason = 'DAILY_LIMIT_REACHED'
  elseif redis.call('EXISTS', P .. 'xpending:' .. from .. ':' .. to) == 1 then reason = 'PENDING_TO_RECIPIENT'
  elseif available < amount then reason = 'INSUFFICIENT_BALANCE'
  end
  if reason then
    local r = cjson.encode({ok = false, reason = reason, detail = detail ~= '' and detail or nil})
    redis.call('HSET', xk, 'status', 'rejected', 'result', r)
    redis.call('EXPIRE', xk, IDEMPOTENCY_TTL_S)  -- a refusal holds no money: kept as long as any redelivery
    return r
  end
  -- validated; writes follow. From an account: current-year money first, then prior-years (as for payments);
  -- from a wallet: lots oldest first (W6), remembered so a void puts every fen back in its lot.
  local from_cur, from_hist, taken = 0, 0, {}
  if source == 'wallet' then
    local left = amount
    for _, l in ipairs(lots) do
      if left == 0 then break end
      local t = math.min(l.available, left)
      left = left - t
      hincr(P .. 'lot:' .. l.lot_id, 'amount', -t)
      ledger(LEDGER, 'lot:' .. l.lot_id, -t, 'transfer_hold', ref)
      taken[#taken + 1] = {lot_id = l.lot_id, amount_fen = t}
    end
  else
    from_cur = math.min(int(h(ak, 'cur')), amount)
    from_hist = amount - from_cur
    hincr(ak, 'cur', -from_cur)
    hincr(ak, 'hist', -from_hist)
    ledger(LEDGER, 'acct:' .. from .. ':cur', -from_cur, 'transfer_hold', ref)
    ledger(LEDGER, 'acct:' .. from .. ':hist', -from_hist, 'transfer_hold', ref)
  end
  ledger(LEDGER, 'xfer:' .. id .. ':hold', amount, 'transfer_hold', ref)
  local r = cjson.encode({ok = true, status = 'held', expires_ms = exp_ms, binding = binding})
  redis.call('HSET', xk, 'status', 'held', 'hold', amount, 'amount', amount, 'from', from, 'to', to, 'binding', binding,
             'to_prov', to_prov, 'from_cur', from_cur, 'from_hist', from_hist, 'from_lots', cjson.encode(taken),
             'expires_ms', exp_ms, 'result', r)
  redis.call('SADD', P .. 'xfers', id)
  redis.call('ZADD', P .. 'xexpiry', exp_ms, id)
  redis.call('INCR', P .. 'xcount:' .. from .. ':' .. day)
  redis.call('EXPIRE', P .. 'xcount:' .. from .. ':' .. day, 3 * 86400)
  redis.call('SET', P .. 'xpending:' .. from .. ':' .. to, id)
  return r
end

-- The lots a wallet-sourced transfer took, as {lot_id, amount_fen}. Stored as JSON: ids may hold any character
-- (an id with a comma once split wrong and destroyed money). Records written before that were "id=fen,id=fen".
local function taken_lots(raw)
  if raw == nil or raw == '' then return {} end
  if string.sub(raw, 1, 1) == '[' or string.sub(raw, 1, 1) == '{' then return cjson.decode(raw) end
  local out = {}
  for pair in string.gmatch(raw, '[^,]+') do
    local lot_id, t = string.match(pair, '^(.*)=(%d+)$')
    out[#out + 1] = {lot_id = lot_id, amount_fen = int(t)}
  end
  return out
end

if op == 'post' or op == 'void' then
  -- ARGV: op, id, message_id, reason, binding (optional: void only a transfer made under this relationship).
  -- Resolves a held transfer once; afterwards returns the outcome.
  local id, ref, why, only = ARGV[2], ARGV[3], ARGV[4], ARGV[5] or ''
  local xk = P .. 'xfer:' .. id
  local status = h(xk, 'status')
  local made_under = h(xk, 'binding') or ''
  if only ~= '' and made_under ~= '' and made_under ~= only then
    return cjson.encode({ok = false, reason = 'OTHER_BINDING', detail = 'made under binding ' .. made_under})
  end
  if status == 'posted' or status == 'voided' then
    return cjson.encode({ok = true, outcome = status, reason = h(xk, 'reason') or '', amount = int(h(xk, 'amount')),
                         from = h(xk, 'from'), to = h(xk, 'to'), to_prov = h(xk, 'to_prov'),
                         to_sender = cjson.decode(h(xk, 'to_sender') or '[]')})
  end
  if status ~= 'held' then return fail('UNKNOWN_TRANSFER', 'no held transfer ' .. id) end
  local amount, from, to = int(h(xk, 'hold')), h(xk, 'from'), h(xk, 'to')
  local to_sender = {}
  redis.call('HSET', xk, 'hold', 0, 'reason', why)
  ledger(LEDGER, 'xfer:' .. id .. ':hold', -amount, 'transfer_' .. op, ref)
  if op == 'post' then
    -- the money leaves this province's fund (W7 clears it between funds)
    hincr(P .. 'totals', 'external_net', -amount)
    redis.call('HSET', xk, 'status', 'posted')
  else
    local ak = P .. 'acct:' .. from
    local from_cur, from_hist = int(h(xk, 'from_cur')), int(h(xk, 'from_hist'))
    hincr(ak, 'cur', from_cur)
    hincr(ak, 'hist', from_hist)
    ledger(LEDGER, 'acct:' .. from .. ':cur', from_cur, 'transfer_void', ref)
    ledger(LEDGER, 'acct:' .. from .. ':hist', from_hist, 'transfer_void', ref)
    for _, taken in ipairs(taken_lots(h(xk, 'from_lots'))) do
      local lk = P .. 'lot:' .. taken.lot_id
      if h(lk, 'status') == 'active' then
        hincr(lk, 'amount', taken.amount_fen)
        ledger(LEDGER, 'lot:' .. taken.lot_id, taken.amount_fen, 'transfer_void', ref)
      else
        -- the lot went back to its sender meanwhile (W6): the voided money follows it, nothing stays here
        to_sender[#to_sender + 1] = {lot_id = taken.lot_id, sender = h(lk, 'sender'),
                                     sender_prov = h(lk, 'sender_prov'), amount_fen = taken.amount_fen}
        hincr(P .. 'totals', 'external_net', -taken.amount_fen)
        hincr(P .. 'rout', 'void:' .. id .. ':' .. taken.lot_id, taken.amount_fen)
      end
    end
    redis.call('HSET', xk, 'status', 'voided', 'to_sender', cjson.encode(to_sender))
  end
  if op == 'post' then redis.call('ZREM', P .. 'xexpiry', id) end  -- a void is unscheduled after its messages are out
  if redis.call('GET', P .. 'xpending:' .. from .. ':' .. to) == id then
    redis.call('DEL', P .. 'xpending:' .. from .. ':' .. to)
  end
  return cjson.encode({ok = true, outcome = op == 'post' and 'posted' or 'voided', reason = why,
                       amount = int(h(xk, 'amount')), from = from, to = to, to_prov = h(xk, 'to_prov'),
                       to_sender = to_sender})
end

if op == 'offer' then
  -- ARGV: op, id, from, from_prov, to, amount, expires_ms, binding ('' from a source that did not send one)
  local dk = P .. 'dxfer:' .. ARGV[2]
  local status = h(dk, 'status')
  if status then return cjson.encode({ok = status ~= 'refused', status = status}) end
  local wallet_ok = h(P .. 'wallet:' .. ARGV[5], 'status') == 'active'
  redis.call('HSET', dk, 'status', wallet_ok and 'offered' or 'refused', 'from', ARGV[3], 'from_prov', ARGV[4],
             'to', ARGV[5], 'amount', ARGV[6], 'expires_ms', ARGV[7], 'binding', ARGV[8] or '')
  return cjson.encode({ok = wallet_ok, status = wallet_ok and 'offered' or 'refused'})
end

if op == 'accept' then
  -- ARGV: op, id, to
  local dk = P .. 'dxfer:' .. ARGV[2]
  local status = h(dk, 'status')
  if not status then return fail('UNKNOWN_TRANSFER', 'no transfer offered with this id') end
  if h(dk, 'to') ~= ARGV[3] then
    return cjson.encode({ok = false, reason = 'NOT_RECIPIENT', detail = 'only the recipient may accept',
                         from = h(dk, 'from'), to = h(dk, 'to')})
  end
  if status == 'offered' and h(P .. 'wallet:' .. ARGV[3], 'status') ~= 'active' then
    return cjson.encode({ok = false, reason = 'WALLET_CLOSED', detail = 'the recipient\'s wallet is closed',
                         status = status, from = h(dk, 'from'), to = h(dk, 'to')})
  end
  if status == 'offered' then redis.call('HSET', dk, 'status', 'accepting'); status = 'accepting' end
  return cjson.encode({ok = status == 'accepting' or status == 'accepted', status = status,
                       from_prov = h(dk, 'from_prov'), from = h(dk, 'from'), to = h(dk, 'to')})
end

-- Whether the relationship a transfer was made under has ended (its lots go back to the sender, W6).
local function relationship_ended(dk)
  local binding = h(dk, 'binding') or ''
  if binding ~= '' then return redis.call('SISMEMBER', P .. 'wended', binding) == 1 end
  return redis.call('SISMEMBER', P .. 'wend:' .. h(dk, 'to'), h(dk, 'from')) == 1
end

if op == 'complete' then
  -- ARGV: op, id, outcome ('posted'|'voided'), message_id. Credits a lot exactly once.
  local id, outcome, ref = ARGV[2], ARGV[3], ARGV[4]
  local dk = P .. 'dxfer:' .. id
  local status = h(dk, 'status')
  -- `wallet` and `ended`: the recipient's wallet status and whether the relationship has ended as the lot
  -- lands, read here rather than in more round trips (such a lot follows the others back to its sender)
  if status == 'accepted' or status == 'returned' then
    return cjson.encode({ok = true, status = status, applied = false, from = h(dk, 'from'),
                         from_prov = h(dk, 'from_prov'), to = h(dk, 'to'), amount = int(h(dk, 'amount')),
                         binding = h(dk, 'binding') or '', ended = relationship_ended(dk),
                         wallet = h(P .. 'wallet:' .. h(dk, 'to'), 'status') or ''})
  end
  if not status then return fail('UNKNOWN_TRANSFER', 'no transfer offered with this id') end
  if outcome == 'posted' then
    local to, amount = h(dk, 'to'), int(h(dk, 'amount'))
    local lk = P .. 'lot:' .. id
    redis.call('HSET', lk, 'holder', to, 'sender', h(dk, 'from'), 'sender_prov', h(dk, 'from_prov'),
               'amount', amount, 'original', amount, 'status', 'active', 'binding', h(dk, 'binding') or '')
    redis.call('RPUSH', P .. 'lots:' .. to, id)  -- creation order = spending order (oldest first, W6)
    redis.call('SADD', P .. 'lotids', id)
    hincr(P .. 'totals', 'external_net', amount)
    ledger(LEDGER, 'lot:' .. id, amount, 'transfer_in', ref)
    redis.call('HSET', dk, 'status', 'accepted')
    return cjson.encode({ok = true, status = 'accepted', applied = true, from = h(dk, 'from'),
                         from_prov = h(dk, 'from_prov'), to = to, amount = amount,
                         binding = h(dk, 'binding') or '', ended = relationship_ended(dk),
                         wallet = h(P .. 'wallet:' .. to, 'status') or ''})
  end
  redis.call('HSET', dk, 'status', 'returned')
  return cjson.encode({ok = true, status = 'returned', applied = true})
end

if op == 'return_lots' then
  -- ARGV: op, holder, sender ('' = every sender), batch_id, binding ('' = any; a lot made before binding ids
  -- were kept matches any). W6: unspent money leaves for its senders.
  local holder, sender, batch, binding = ARGV[2], ARGV[3], ARGV[4], ARGV[5] or ''
  local done = P .. 'done:' .. batch
  local stored = idem_get(done)
  if stored then return stored end
  local returns = send_lots_home(holder, sender, batch, binding)
  local r = cjson.encode({ok = true, returns = returns})
  idem_put(done, r)
  return r
end

if op == 'receive_return' then
  -- ARGV: op, return_id, sender, amount, may_open ('1': money following a person who moved here may arrive
  -- before their account does; the account is opened for it), and for such money its current-year and next-year
  -- parts and their year ('' = not known). The sender's account takes it: a returned lot as prior-years money,
  -- money following a person in the year it belongs to (C1).
  local done = P .. 'done:return:' .. ARGV[2]
  local stored = idem_get(done)
  if stored then return stored end
  local amount, cur, nxt, year = int(ARGV[4]), 0, 0, nil
  if ARGV[5] == '1' then  -- a returned lot is wallet money: prior-years money of its sender, whatever it says
    cur, nxt = int(ARGV[6]), int(ARGV[7])
    year = (ARGV[8] and ARGV[8] ~= '') and int(ARGV[8]) or nil
  end
  if cur < 0 or nxt < 0 or cur + nxt > amount then
    return fail('BAD_AMOUNT', 'current and next-year parts exceed the amount')
  end
  local ak = P .. 'acct:' .. ARGV[3]
  if redis.call('EXISTS', ak) == 0 then
    if ARGV[5] ~= '1' then return fail('NO_ACCOUNT', 'sender has no account here') end
    -- opened for money that arrived first, at the person's arrival here; frozen if a suspension or end of the
    -- person was heard since (C1)
    local arrived = int(redis.call('HGET', P .. 'person:' .. ARGV[3], 'arrived_ver'))
    local frozen_at, frozen_why = freeze_after(P, ARGV[3], arrived)
    redis.call('HSET', ak, 'cur', 0, 'hist', 0, 'status', frozen_at and 'frozen' or 'active',
               'version', frozen_at or arrived, 'status_ver', frozen_at or arrived, 'reason', frozen_why or '')
    redis.call('SADD', P .. 'accts', ARGV[3])
  end
  local why = ARGV[5] == '1' and 'forward_received' or 'lot_return_received'
  land_in_years(P, ARGV[3], cur, amount - cur - nxt, nxt, year, why, ARGV[2])
  hincr(P .. 'totals', 'external_net', amount)
  hincr(P .. 'rin', ARGV[2], amount)
  local r = cjson.encode({ok = true})
  idem_put(done, r)
  return r
end

if op == 'relate' then
  -- ARGV: op, from, to, on ('1'|'0'), binding, ends ('1': the relationship ended, not just moved away), at_ms
  -- (the binding event's time, on the binding service's clock). The wallet relationship that allows transfers
  -- (B1/B2 via binding): made or moved here, ended or moved away. An ended binding never allows transfers again;
  -- an older binding's end or move leaves a newer one alone; and of two relationships of the pair made or moved
  -- here, the one whose event is newer is kept, whichever is heard last (a late copy of an older one's creation
  -- may reach a province that never heard its end, the sender having lived elsewhere then). `wrbt` keeps the
  -- newest such time heard for the pair, also after the relationship moved away or ended (so an older copy heard
  -- later is known as older).
  local from, to, on, binding, at_ms = ARGV[2], ARGV[3], ARGV[4], ARGV[5] or '', int(ARGV[7])
  local key, at_key = P .. 'wrb:' .. from, P .. 'wrbt:' .. from
  if ARGV[6] == '1' and binding ~= '' then redis.call('SADD', P .. 'wended', binding) end
  local current = h(key, to)
  local newest_at = int(h(at_key, to))
  if on == '1' then
    if binding ~= '' and redis.call('SISMEMBER', P .. 'wended', binding) == 1 then
      return cjson.encode({ok = true, applied = false})
    end
    if current ~= binding and newest_at > at_ms then return cjson.encode({ok = true, applied = false}) end
    redis.call('HSET', key, to, binding)
  elseif current and current ~= '' and binding ~= '' and current ~= binding then
    return cjson.encode({ok = true, applied = false})
  else
    redis.call('HDEL', key, to)
  end
  redis.call('HSET', at_key, to, math.max(at_ms, newest_at))
  redis.call('SREM', P .. 'wrel:' .. from, to)
  return cjson.encode({ok = true, applied = true})
end

if op == 'end_relationship' then
  -- ARGV: op, holder, sender, binding, ended ('1'|'0'). The recipient's province: a lot landing for an ended
  -- relationship goes back as it lands (W6). `wend` is the pair-keyed form for transfers offered without a
  -- binding id (a new relationship of the pair clears it; a late copy of an ended one's creation does not).
  if ARGV[5] == '1' then
    if ARGV[4] ~= '' then redis.call('SADD', P .. 'wended', ARGV[4]) end
    redis.call('SADD', P .. 'wend:' .. ARGV[2], ARGV[3])
  elseif ARGV[4] == '' or redis.call('SISMEMBER', P .. 'wended', ARGV[4]) == 0 then
    redis.call('SREM', P .. 'wend:' .. ARGV[2], ARGV[3])
  end
  return cjson.encode({ok = true})
end

return fail('BAD_OP', op)
