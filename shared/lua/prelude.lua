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

-- C1: the account knows which year its current-year balance belongs to (`year`, set by its first credit or
-- rollover). Money arriving of a year: this year → current; an earlier year → prior years (that year has rolled
-- over); the next year → `next`, money of a year that has not begun in this account's books, not spendable until
-- the rollover makes it current (or money of a later year that has begun: it rolls the account on, op credit).
local function credit_bucket(held, year)
  if not held then return 'cur' end
  if year == held then return 'cur' end
  if year < held then return 'hist' end
  if year == held + 1 then return 'next' end
  return nil
end

local function year_of(k)
  local held = redis.call('HGET', k, 'year')
  return (held and held ~= '') and int(held) or nil
end

-- C1: the account's year moves on to `to_year` (> its `held` year, or `held` nil: not known), as the rollovers in
-- between would have moved it: current-year money becomes prior-years money, and `next` becomes current when
-- `to_year` directly follows `held` (a missed year's `next` is past money too). Returns what went to prior years.
local function roll_on(prefix, psn, held, to_year, ref)
  local k = prefix .. 'acct:' .. psn
  local cur, nxt = int(redis.call('HGET', k, 'cur')), int(redis.call('HGET', k, 'next'))
  local to_cur = (held and to_year == held + 1) and nxt or 0
  local to_hist = cur + nxt - to_cur
  redis.call('HSET', k, 'cur', to_cur, 'next', 0, 'year', to_year)
  hincr(k, 'hist', to_hist)
  local ledger_key = prefix .. 'ledger'
  ledger(ledger_key, 'acct:' .. psn .. ':cur', to_cur - cur, 'year_rollover', ref)
  ledger(ledger_key, 'acct:' .. psn .. ':next', -nxt, 'year_rollover', ref)
  ledger(ledger_key, 'acct:' .. psn .. ':hist', to_hist, 'year_rollover', ref)
  return to_hist
end

-- C1: a person's account money arriving from another province (the account itself, or money forwarded after it)
-- lands bucket by bucket in the year it belongs to here, as a credit would: `cur` is of year `year` (nil: not
-- known, it stays current), `nxt` of the year after, `hist` prior years. Ledger entries under `reason`, `ref`.
-- An account that comes home after a year or more away heard no rollover meanwhile (they reach the province the
-- person is insured in): money of a later year first rolls it on to that year.
local function land_in_years(prefix, psn, cur, hist, nxt, year, reason, ref)
  local k = prefix .. 'acct:' .. psn
  local held = year_of(k)
  local y = year or held
  if not held and y then redis.call('HSET', k, 'year', y); held = y end
  if y and y > held then roll_on(prefix, psn, held, y, ref); held = y end
  local into = {cur = 0, hist = hist, next = 0}
  for bucket, fen in pairs({cur = cur, next = nxt}) do
    local of_year = y and (bucket == 'cur' and y or y + 1) or held
    local lands = (of_year and credit_bucket(held, of_year)) or (bucket == 'cur' and 'cur' or 'next')
    into[lands] = into[lands] + fen
  end
  for _, bucket in ipairs({'cur', 'hist', 'next'}) do
    hincr(k, bucket, into[bucket])
    ledger(prefix .. 'ledger', 'acct:' .. psn .. ':' .. bucket, into[bucket], reason, ref)
  end
end
