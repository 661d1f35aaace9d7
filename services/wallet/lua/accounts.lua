-- Personal accounts (C1): enrollment, status, monthly credit, year-end rollover.
-- KEYS[1] = key prefix of this province (e.g. "w32:"); ARGV[1] = op; then op arguments.
-- Returns a JSON result; the same message id always returns the same result (idempotent).
local P = KEYS[1]
local op = ARGV[1]
local LEDGER = P .. 'ledger'

local function acct_key(psn) return P .. 'acct:' .. psn end
-- The version of the last status decision: `status_ver` is kept only while older than `version` (C1 in any order:
-- a move decides the region, not the status), and an account or person from before it has only `version`.
local function decided_of(version, status_ver) return status_ver and int(status_ver) or int(version) end

if op == 'person' then
  -- ARGV: op, psn, admdvs, status ('' = decides none: a move inside the province), version, arrived_from ('' =
  -- none), moved ('1': a move into or inside the province). The non-money view of a person enrolled here (W1: who
  -- may open a wallet). C1 in any order: the newest event gives the region and `version`; the newest status
  -- decision the status (`status_ver`, kept only while older than `version`), so a stop heard after a newer move
  -- inside the province still decides it. Returns whether this event decides the status now (it is the newest
  -- to decide it, or a redelivery of that one).
  local psn, admdvs, status, version, from = ARGV[2], ARGV[3], ARGV[4], int(ARGV[5]), ARGV[6] or ''
  local k = P .. 'person:' .. psn
  -- the newest move here, in any order: an account that opens later for an older enrolment takes its version and
  -- region, as `arrive` would have given it (a move lifts no freeze; only an arrival from another province does)
  if ARGV[7] == '1' and int(redis.call('HGET', k, 'moved_ver')) < version then
    redis.call('HSET', k, 'moved_ver', version, 'moved_admdvs', admdvs)
  end
  -- the newest arrival, in any order: an account opened for money that comes before it (`_on_account`,
  -- receive_return) opens as of it, so a suspension from the person's earlier stay here does not freeze it (C1)
  if from ~= '' and int(redis.call('HGET', k, 'arrived_ver')) < version then
    redis.call('HSET', k, 'arrived_from', from, 'arrived_ver', version)
  end
  local held = redis.call('HMGET', k, 'version', 'status_ver')
  local current, decided = int(held[1]), decided_of(held[1], held[2])
  local decides = status ~= '' and version >= decided
  if version > current then
    redis.call('HSET', k, 'admdvs', admdvs, 'version', version)
    current = version
  end
  if decides and version > decided then
    redis.call('HSET', k, 'status', status)
    decided = version
  end
  if decided == current then redis.call('HDEL', k, 'status_ver') else redis.call('HSET', k, 'status_ver', decided) end
  return cjson.encode({ok = true, decided = decides})
end

if op == 'enroll' or op == 'status' then
  -- ARGV: op, psn, version, status ('active'|'frozen'), admdvs, reason ('' = none: why it is frozen)
  local psn, version, status, admdvs, why = ARGV[2], int(ARGV[3]), ARGV[4], ARGV[5], ARGV[6] or ''
  local k = acct_key(psn)
  if op == 'status' then record_freeze(P, psn, version, why, admdvs) end
  if redis.call('EXISTS', k) == 0 then
    if op == 'status' then
      return cjson.encode({ok = true, applied = false})  -- no account here; nothing to freeze (it is recorded)
    end
    -- heard first, the newest of a freeze and an arrival from another province wins, as version order leaves it:
    -- frozen at a freeze after the arrival; at an arrival after the freeze, active (the stay it froze ended when
    -- the person left, `move_out`, and `arrive` reopened the account). The newest move then gives the region.
    local decided = version
    local frozen_at, frozen_why, frozen_in = freeze_after(P, psn, version)
    local heard = redis.call('HMGET', P .. 'person:' .. psn, 'arrived_ver', 'moved_ver', 'moved_admdvs')
    if int(heard[1]) <= math.max(version, frozen_at or 0) and frozen_at then
      status, decided, why, admdvs = 'frozen', frozen_at, frozen_why, frozen_in or admdvs
    elseif int(heard[1]) > decided then
      decided = int(heard[1])  -- the arrival decided the status (active): an older stop heard later is stale
    end
    version = decided
    if int(heard[2]) >= version then version, admdvs = int(heard[2]), heard[3] end  -- an arrival is a move
    redis.call('HSET', k, 'cur', 0, 'hist', 0, 'status', status, 'status_ver', decided, 'version', version,
               'admdvs', admdvs, 'reason', why)
    redis.call('SADD', P .. 'accts', psn)
    return cjson.encode({ok = true, applied = true})
  end
  -- C1 in any order: an enrolment or a stop decides the status if it is newer than the account's last status
  -- decision (`status_ver`; an account from before it has only `version`), even where a newer move has since
  -- raised the account's version: a move decides the region, not the status. Version and region follow only what
  -- is newer than the account.
  local held = redis.call('HMGET', k, 'version', 'status_ver')
  local current = int(held[1])
  if decided_of(held[1], held[2]) >= version then
    return cjson.encode({ok = true, applied = false})
  end
  redis.call('HSET', k, 'status', status, 'status_ver', version, 'reason', why)
  if version > current then redis.call('HSET', k, 'version', version, 'admdvs', admdvs) end
  return cjson.encode({ok = true, applied = true})
end

if op == 'credit' then
  -- ARGV: op, psn, amount_fen, message_id, period (YYYY-MM), latest_year, begun_year (from the business clock:
  -- the latest year a credit may be for, and the year that has begun; '' = no bound). A credit lands in the year
  -- of its period: the account's year → current; an earlier one → prior years. A credit of a later year that has
  -- begun shows that the years before it ended, wherever their rollovers went (a person who lived elsewhere then):
  -- the account first rolls on to it (C1). One of a year still to come waits in `next` for its rollover.
  local psn, amount, ref, period = ARGV[2], int(ARGV[3]), ARGV[4], ARGV[5] or ''
  local done = P .. 'done:' .. ref
  local stored = idem_get(done)
  if stored then return stored end
  local k = acct_key(psn)
  if redis.call('EXISTS', k) == 0 then return fail('NO_ACCOUNT', 'no personal account for this person here') end
  if amount <= 0 then return fail('BAD_AMOUNT', 'credit must be positive') end
  local year = tonumber(string.sub(period, 1, 4))
  if not year or not string.match(period, '^%d%d%d%d%-%d%d$') then
    return fail('BAD_PERIOD', 'period must be YYYY-MM, got ' .. period)
  end
  local latest, begun = tonumber(ARGV[6] or ''), tonumber(ARGV[7] or '')
  if latest and year > latest then
    return fail('BAD_PERIOD', 'credit for ' .. period .. ', later than ' .. latest)
  end
  local held = year_of(k)
  local rolled_to = (begun and year > begun) and begun or year
  local now_in = held and math.max(held, rolled_to) or year
  local bucket = credit_bucket(now_in, year)
  if not bucket then
    return fail('BAD_PERIOD', 'credit for ' .. period .. ' but this account is still in ' .. now_in)
  end
  -- validated; writes follow
  if not held then
    redis.call('HSET', k, 'year', year)
  elseif now_in > held then
    roll_on(P, psn, held, now_in, ref)
  end
  hincr(k, bucket, amount)
  hincr(P .. 'totals', 'external_net', amount)
  hincr(P .. 'totals', 'credited', amount)  -- the national audit's "credits" (money that entered the system)
  ledger(LEDGER, 'acct:' .. psn .. ':' .. bucket, amount, 'monthly_credit', ref)
  -- `moved`: the person has left this province, so the caller forwards the credit after them
  local result = cjson.encode({ok = true, applied = true, bucket = bucket, cur = int(redis.call('HGET', k, 'cur')),
                               moved = redis.call('HGET', k, 'status') == 'moved'})
  idem_put(done, result)
  return result
end

if op == 'rollover' then
  -- ARGV: op, psn, year, message_id. Once per person and year, whatever the message id.
  local psn, year, ref = ARGV[2], int(ARGV[3]), ARGV[4]
  local done = P .. 'rolled:' .. psn .. ':' .. year
  local stored = idem_get(done)
  if stored then return stored end
  local k = acct_key(psn)
  if redis.call('EXISTS', k) == 0 then return fail('NO_ACCOUNT', 'no personal account for this person here') end
  local held = year_of(k)
  local result
  if held and held > year then
    -- the account is already in a later year (its credits said so): this year's money was never current here
    result = cjson.encode({ok = true, applied = false, moved = 0})
  else
    result = cjson.encode({ok = true, applied = true, moved = roll_on(P, psn, held, year + 1, ref)})
  end
  redis.call('SET', done, result)  -- forever: a year rolls over once
  return result
end

-- 关系转移接续 (C1): a person who moves to another province takes the account with them. The source empties it,
-- marks it `moved`, and records the money as in flight to the destination (`rout`, matched by the national
-- audit); the destination opens or reactivates the account with the same buckets (`rin`). Money that reaches a
-- moved account later (a released earmark when B3 dissolves the mutual aid, a refund, a voided transfer, a
-- returned lot, a late credit) is forwarded the same way (op forward).
local function empty_into_flight(k, psn, id, reason)
  local cur, hist, nxt = int(redis.call('HGET', k, 'cur')), int(redis.call('HGET', k, 'hist')),
      int(redis.call('HGET', k, 'next'))
  local total = cur + hist + nxt
  redis.call('HSET', k, 'cur', 0, 'hist', 0, 'next', 0)
  ledger(LEDGER, 'acct:' .. psn .. ':cur', -cur, reason, id)
  ledger(LEDGER, 'acct:' .. psn .. ':hist', -hist, reason, id)
  ledger(LEDGER, 'acct:' .. psn .. ':next', -nxt, reason, id)
  if total > 0 then
    hincr(P .. 'totals', 'external_net', -total)
    hincr(P .. 'rout', id, total)
  end
  return cur, hist, nxt, total
end

-- Enrolment events reach each province's wallet on its own schedule, so a person may have moved on (or back)
-- by the time money for them arrives. The account's `version` (enrolment version of its last status change)
-- decides: a move older than the account's state is stale, and money arriving for an account that has since
-- moved on passes through to where the person went (never landing in a province they have left).
if op == 'move_out' then
  -- ARGV: op, psn, move_id, new admdvs, version, the region left
  local psn, id, admdvs, version, left = ARGV[2], ARGV[3], ARGV[4], int(ARGV[5]), ARGV[6]
  local done = P .. 'done:' .. id
  local stored = idem_get(done)
  if stored then return stored end
  local k = acct_key(psn)
  local result
  if redis.call('EXISTS', k) == 0 then
    -- no account here (yet): remember where the person went, so an account that arrives late follows them
    redis.call('HSET', k, 'cur', 0, 'hist', 0, 'status', 'moved', 'moved_to', admdvs, 'version', version,
               'status_ver', version, 'admdvs', left, 'reason', '')
    redis.call('SADD', P .. 'accts', psn)
    result = cjson.encode({ok = true, applied = false})
  elseif int(redis.call('HGET', k, 'version')) >= version then
    result = cjson.encode({ok = true, applied = false, stale = true})
  else
    local year = redis.call('HGET', k, 'year')
    local cur, hist, nxt = empty_into_flight(k, psn, 'move:' .. id, 'account_moved_out')
    -- `reason` says why an account is frozen; a moved one is not (the move decides its status). It was last in
    -- the region the person left, whatever moves inside the province were heard before this one
    redis.call('HSET', k, 'status', 'moved', 'moved_to', admdvs, 'version', version, 'status_ver', version,
               'reason', '', 'admdvs', left)
    result = cjson.encode({ok = true, applied = true, cur = cur, hist = hist, next = nxt,
                           year = (year and year ~= '') and int(year) or cjson.null})
  end
  idem_put(done, result)
  return result
end

if op == 'arrive' then
  -- ARGV: op, psn, version, admdvs, from another province ('1') or from inside it. A move gives the region if it
  -- is the newest event; an arrival from another province also decides the status, if it is the newest decision
  -- (C1 in any order, `status_ver`): the person lives here again, so an account left `moved` by an older move, or
  -- frozen by a suspension of the stay that ended when they left, is active again and money stops being
  -- forwarded away from where they live. A move inside the province decides no status.
  local psn, version, admdvs = ARGV[2], int(ARGV[3]), ARGV[4]
  local k = acct_key(psn)
  if redis.call('EXISTS', k) == 1 then
    local held = redis.call('HMGET', k, 'version', 'status_ver')
    local decided = decided_of(held[1], held[2])
    if ARGV[5] == '1' and decided < version then
      redis.call('HSET', k, 'status', 'active', 'reason', '', 'status_ver', version)
    end
    if int(held[1]) < version then redis.call('HSET', k, 'version', version, 'admdvs', admdvs) end
  end
  return cjson.encode({ok = true})
end

if op == 'move_in' then
  -- ARGV: op, psn, move_id, admdvs, version, cur, hist, next, year ('' = unknown)
  local psn, id, admdvs, version = ARGV[2], ARGV[3], ARGV[4], int(ARGV[5])
  local cur, hist, nxt, year = int(ARGV[6]), int(ARGV[7]), int(ARGV[8]), ARGV[9]
  local done = P .. 'done:movein:' .. id
  local stored = idem_get(done)
  if stored then return stored end
  local k = acct_key(psn)
  local total = cur + hist + nxt
  local result
  -- the account's last status decision, apart from its version (a move inside the province raises the version
  -- and decides nothing, C1): what is compared with the arrival's version
  local own = redis.call('HMGET', k, 'status', 'version', 'status_ver', 'admdvs')
  local own_version = int(own[2])
  local own_decided = decided_of(own[2], own[3])
  local own_region = own[4]
  if not own[1] then
    -- no account yet: it opens as of what was heard of the person here, as `enroll` would (C1 in any order): an
    -- arrival from another province heard before the account decided its status, the newest move its region
    local heard = redis.call('HMGET', P .. 'person:' .. psn, 'arrived_ver', 'moved_ver', 'moved_admdvs')
    own_decided, own_version, own_region = int(heard[1]), int(heard[2]), heard[3]
  end
  if own[1] == 'moved' and own_decided > version then
    -- the person has already moved on from here (a move out newer than this arrival): the account passes
    -- through, buckets intact, as of that move out
    local onward = id .. '>' .. string.sub(redis.call('HGET', k, 'moved_to'), 1, 2)
    if total > 0 then
      hincr(P .. 'rin', 'move:' .. id, total)
      hincr(P .. 'rout', 'move:' .. onward, total)
    end
    result = cjson.encode({ok = true, applied = true, amount = total, onward_id = onward,
                           to_admdvs = redis.call('HGET', k, 'moved_to'), version = own_decided})
  else
    -- C1 in any order, the newest of three status decisions wins: a suspension or end heard here after both the
    -- arrival and the account's own decision (frozen at it); the account's own freeze, newer than the arrival
    -- (kept); else the arrival, or a newer re-enrolment (active). The status compares decisions (`status_ver`);
    -- the version and region are the newest event's, never lowered by an older arrival. Decided before the first
    -- write: a script that fails halfway keeps what it wrote, and a replay would then add the money again.
    local at = math.max(version, own_decided)
    local newest = math.max(version, own_version)
    local region = (version >= own_version or not own_region) and admdvs or own_region
    local frozen_at, frozen_why, frozen_in = freeze_after(P, psn, at)
    local state
    if frozen_at then
      if frozen_at > newest then newest, region = frozen_at, frozen_in or region end
      state = {'status', 'frozen', 'reason', frozen_why, 'status_ver', frozen_at}
    elseif own[1] == 'frozen' and own_decided > version then
      state = {'status_ver', own_decided}  -- kept, and said apart from the version set below
    else
      state = {'status', 'active', 'reason', '', 'status_ver', at}
    end
    if not own[1] then
      redis.call('HSET', k, 'cur', 0, 'hist', 0)
      redis.call('SADD', P .. 'accts', psn)
    end
    land_in_years(P, psn, cur, hist, nxt, year ~= '' and int(year) or nil, 'account_moved_in', id)
    hincr(P .. 'totals', 'external_net', total)
    if total > 0 then hincr(P .. 'rin', 'move:' .. id, total) end
    redis.call('HSET', k, 'version', newest, 'admdvs', region, unpack(state))
    result = cjson.encode({ok = true, applied = true, amount = total})
  end
  idem_put(done, result)
  return result
end

if op == 'forward' then
  -- ARGV: op, psn, forward_id. Whatever sits in a moved account leaves for the person's current province.
  local psn, id = ARGV[2], ARGV[3]
  local done = P .. 'done:' .. id
  local stored = idem_get(done)
  if stored then return stored end
  local k = acct_key(psn)
  local result
  if redis.call('HGET', k, 'status') ~= 'moved' then
    result = cjson.encode({ok = true, amount = 0})
  else
    local year = year_of(k)
    local cur, _, nxt, total = empty_into_flight(k, psn, id, 'forwarded_after_move')
    -- its buckets travel with it, as the account's did (C1): current-year money stays current-year money
    result = cjson.encode({ok = true, amount = total, cur = cur, next = nxt, year = year or cjson.null,
                           to_prov = string.sub(redis.call('HGET', k, 'moved_to'), 1, 2)})
  end
  idem_put(done, result)
  return result
end

return fail('BAD_OP', op)
