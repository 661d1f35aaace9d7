-- Read-only, atomic snapshot of one province for the audits (C2, and the national audit across provinces).
-- KEYS[1] = province prefix. One script call, so balances, totals, in-flight records and the ledger position
-- are read at the same instant: under traffic the audit compares like with like. The ledger itself is
-- summed afterwards up to `ledger_last` (it is append-only, so those entries never change).
local P = KEYS[1]
local function h(k, f) return redis.call('HGET', k, f) end

local balances, lots, posted = {}, {}, {}
for _, psn in ipairs(redis.call('SMEMBERS', P .. 'accts')) do
  balances['acct:' .. psn .. ':cur'] = int(h(P .. 'acct:' .. psn, 'cur'))
  balances['acct:' .. psn .. ':hist'] = int(h(P .. 'acct:' .. psn, 'hist'))
  balances['acct:' .. psn .. ':next'] = int(h(P .. 'acct:' .. psn, 'next'))
end
for _, b_id in ipairs(redis.call('SMEMBERS', P .. 'binds')) do
  balances['bind:' .. b_id .. ':earmark'] = int(h(P .. 'bind:' .. b_id, 'earmark'))
end
for _, lot_id in ipairs(redis.call('SMEMBERS', P .. 'lotids')) do
  local lk = P .. 'lot:' .. lot_id
  balances['lot:' .. lot_id] = int(h(lk, 'amount'))
  lots[lot_id] = {amount = int(h(lk, 'amount')), original = int(h(lk, 'original')), status = h(lk, 'status'),
                  sender_prov = h(lk, 'sender_prov')}
end
for _, x_id in ipairs(redis.call('SMEMBERS', P .. 'xfers')) do
  local xk = P .. 'xfer:' .. x_id
  balances['xfer:' .. x_id .. ':hold'] = int(h(xk, 'hold'))
  if h(xk, 'status') == 'posted' then posted[x_id] = {amount = int(h(xk, 'amount')), to_prov = h(xk, 'to_prov')} end
end
local function amounts(key)
  local out = {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do out[flat[i]] = int(flat[i + 1]) end
  return out
end
local last = redis.call('XREVRANGE', P .. 'ledger', '+', '-', 'COUNT', 1)
return cjson.encode({balances = balances, lots = lots, posted = posted, totals = amounts(P .. 'totals'),
                     returns_out = amounts(P .. 'rout'), returns_in = amounts(P .. 'rin'),
                     ledger_last = last[1] and last[1][1] or ''})
