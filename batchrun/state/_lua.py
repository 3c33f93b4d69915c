"""The Lua scripts that make admission and settlement atomic in Redis (and rename the keys an
older batchrun wrote).

Times are the Redis server's (`TIME`, in ms), never a host's: hosts' clocks differ, and every
host must agree on when a bucket refills. The UTC day is the caller's (batchrun's injectable
`now_utc`), so a test can move midnight. Keys (all given as KEYS, so a script touches nothing it
was not handed):

    lim    hash  per (API host, API key, model), named by an HMAC keyed by the API key (every
                 name here is): tat_r, tat_t (when each bucket is full again), cool_until,
                 cool_start, streak, last429, scale, scale_at, rpm, tpm
                 (the lowest limits any host was told), cfg_r, cfg_t (the lowest limits a
                 host asking lately was given) and when each was last asked with
                 (cfg_r_at, cfg_t_at). Expires after LIM_TTL_MS idle.
    day    hash  per (…, UTC day): tokens (billed: reservations settled to usage), charge
                 (the server's rate-limit charge: what admission reserved, never settled),
                 requests, exhausted, tpd, rpd (the budget last checked against) and
                 h:<host id> = requests that host was admitted. Expires after 48 h.
                 j:<job> = 1 once a job's usage of the day is in the counts: a job resumed
                 on a Redis that lost it adds what its manifest says it used that day.
                 o:<instance> = tokens that process reserved and has not yet settled
                 (its reservations in flight); g:<instance> = the number and totals of that
                 process's last write applied (see `carried`).
    open   zset  per (…, UTC day): instance -> until when (server ms) its reservations count
                 as in flight: its last admission plus its request timeout and a margin, so a
                 dead host's unsettled reservations stop holding other hosts back then.
    hosts  zset  host id -> last admission (ms); `status` lists the recent ones.
    scopes set   per API key and UTC day (named by the key's HMAC): "API host|model" of the
                 scopes the key used that day, for `status`.
    learned hash per (API host, API key, model): counts ("charge" once a per-day 429 showed
                 the server's daily limit counts its charge, else billed tokens) and
                 accounting (the server's charge per token of our estimate). Expires 30 days
                 after the last write.
    epoch  str   a random value set when batchrun first meets this Redis; a script that finds
                 another (or none) knows the server lost its memory and refuses to go on. It
                 expires with the daily keys (48 h after the last admission): nothing it vouches
                 for outlives it.
"""

from __future__ import annotations

# What a process's settled reservations close (KEYS day and open, ARGV instance and tokens
# closed), and what a write carries (`carried`): shared by both scripts.
#
# A process gives back (tokens, requests, reservations closed, charge) as running totals per
# day, each write numbered; the day hash keeps, per process (g:<instance>), the number and
# totals it last applied. A write applies only what its totals add to those, and only when its
# number is higher: a write Redis ran but whose answer was lost (the caller cancelled) is
# carried again by the next one without being applied twice, and a late write adds nothing a
# later one already applied.
CLOSE = """
local function carried(day, inst, seq, t, r, c, g, ttl)
  local was = redis.call('HGET', day, 'g:' .. inst)
  local s0, t0, r0, c0, g0 = 0, 0, 0, 0, 0
  if was then
    -- (a process's totals written before the charge count have no fifth number)
    local a, b, d, e, f = string.match(was, '^(%d+) (%-?%d+) (%-?%d+) (%-?%d+) ?(%-?%d*)$')
    s0, t0, r0, c0, g0 = tonumber(a), tonumber(b), tonumber(d), tonumber(e), tonumber(f) or 0
  end
  if seq <= s0 or (t == t0 and r == r0 and c == c0 and g == g0) then return 0, 0, 0, 0 end
  redis.call('HSET', day, 'g:' .. inst, string.format('%d %d %d %d %d', seq, t, r, c, g))
  redis.call('EXPIRE', day, ttl)
  return t - t0, r - r0, c - c0, g - g0
end
local function close(day, open, inst, closed)
  if closed == 0 then return end
  if redis.call('HINCRBY', day, 'o:' .. inst, -closed) <= 0 then
    redis.call('HDEL', day, 'o:' .. inst)
    redis.call('ZREM', open, inst)
  end
end
"""

# KEYS: lim, day, hosts, scopes, epoch, open, learned
# ARGV: epoch, host id, scope, rpm, tpm, tpd, rpd, cost, tokens given back, requests given
#       back, oks, burst ms, ahead ms, lim ttl ms, day ttl s, active ms, instance, tokens
#       closed, hold ms, write number (given back and closed: this process's totals, see
#       `carried`), charge given back (the same), the job's field (j:…, or empty), the
#       tokens the job's manifest says it used that day
# Returns: status (0 admitted, 1 day spent, 2 try later, 3 state lost), wait ms, day tokens
#          (the count the daily budget stops on), day requests, exhausted, rpm, tpm, server
#          now ms, (status 1) the tokens other processes hold in reservations still in
#          flight, day billed tokens, day charge, 1 when the budget counts the charge, and
#          the learned accounting (a string, empty when none).
ADMIT = CLOSE + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[5]) ~= ARGV[1] then
  return {3, 0, 0, 0, 0, 0, 0, now, 0, 0, 0, 0, ''}
end
local d_tokens, d_requests, d_closed, d_charge = carried(KEYS[2], ARGV[17],
  tonumber(ARGV[20]), tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[18]),
  tonumber(ARGV[21]), tonumber(ARGV[15]))
close(KEYS[2], KEYS[6], ARGV[17], d_closed)
-- A job's first admission of the day on this Redis: what its earlier runs used that day counts
-- here too (a Redis restarted without persistence forgot it; one that kept it has the field).
if ARGV[22] ~= '' and redis.call('HSETNX', KEYS[2], ARGV[22], 1) == 1 then
  local seed = tonumber(ARGV[23])
  if seed > 0 then
    redis.call('HINCRBY', KEYS[2], 'tokens', seed)
    redis.call('HINCRBY', KEYS[2], 'charge', seed)
  end
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[15]))
end
local lim, day = KEYS[1], KEYS[2]
local rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local tpd, rpd, cost = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local burst, ahead = tonumber(ARGV[12]), tonumber(ARGV[13])
-- What this host gives back (settled below its reservation) counts before it asks again.
if d_tokens ~= 0 then redis.call('HINCRBY', day, 'tokens', d_tokens) end
if d_requests ~= 0 then redis.call('HINCRBY', day, 'requests', d_requests) end
if d_charge ~= 0 then redis.call('HINCRBY', day, 'charge', d_charge) end
local learned = redis.call('HMGET', KEYS[7], 'counts', 'accounting')
local on_charge = learned[1] == 'charge' and tpd > 0
local accounting = learned[2] or ''
local s = redis.call('HMGET', lim, 'tat_r', 'tat_t', 'cool_until', 'scale', 'scale_at', 'rpm',
                     'tpm')
local learned_r, learned_t = tonumber(s[6] or '0'), tonumber(s[7] or '0')
if rpm > 0 and learned_r > 0 and learned_r < rpm then rpm = learned_r end
if tpm > 0 and learned_t > 0 and learned_t < tpm then tpm = learned_t end
-- One bucket paces at one rate. Hosts given different limits for the key (--rpm, --tier) that
-- each paced their own turns at their own rate would hold no host to any limit, so the lowest
-- a host still asking was given paces every host; one silent for `active` ms lets go of it.
-- (Only pacing: the host keeps its own limits for sizing, as nothing was learned from the
-- server.)
local active = tonumber(ARGV[16])
local function lowest(own, given, field, at_field, held, at)
  held, at = tonumber(held or '0'), tonumber(at or '0')
  if own > 0 and (held == 0 or own <= held or now - at > active) then
    redis.call('HSET', lim, field, own, at_field, now)
    redis.call('PEXPIRE', lim, tonumber(ARGV[14]))
  elseif held > 0 and now - at <= active and (given == 0 or held < given) then
    return held
  end
  return given
end
local c = redis.call('HMGET', lim, 'cfg_r', 'cfg_r_at', 'cfg_t', 'cfg_t_at')
local pace_r = lowest(tonumber(ARGV[4]), rpm, 'cfg_r', 'cfg_r_at', c[1], c[2])
local pace_t = lowest(tonumber(ARGV[5]), tpm, 'cfg_t', 'cfg_t_at', c[3], c[4])
if tonumber(ARGV[11]) > 0 then
  -- The bucket may have expired while idle: what this writes must expire too.
  redis.call('HSET', lim, 'streak', 0)
  redis.call('PEXPIRE', lim, tonumber(ARGV[14]))
end
local u = redis.call('HMGET', day, 'tokens', 'requests', 'exhausted', 'charge')
local billed, used_r = tonumber(u[1] or '0'), tonumber(u[2] or '0')
local exhausted, charge = tonumber(u[3] or '0'), tonumber(u[4] or '0')
local used_t = billed
if on_charge then used_t = charge end
local counts = 0  -- what was learned, whether or not this budget has a --tpd to stop on
if learned[1] == 'charge' then counts = 1 end
if exhausted >= 1 or (tpd > 0 and used_t + cost > tpd) or (rpd > 0 and used_r + 1 > rpd) then
  -- What may still come back: other processes' reservations in flight (settling to what the
  -- server billed), not those past their hold (a dead host's).
  local held = 0
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  for _, inst in ipairs(redis.call('ZRANGE', KEYS[6], 0, -1)) do
    if inst ~= ARGV[17] then
      held = held + tonumber(redis.call('HGET', day, 'o:' .. inst) or '0')
    end
  end
  return {1, 0, used_t, used_r, exhausted, rpm, tpm, now, held, billed, charge, counts,
          accounting}
end
-- A rate cut after 429s recovers by 0.5 % of the limit per second.
local scale = tonumber(s[4] or '1')
if scale < 1 then scale = math.min(1, scale + (now - tonumber(s[5] or now)) * 0.000005) end
local start = math.max(now, tonumber(s[3] or '0'))
local send = start
local tat_r, tat_t
-- GCRA: tat is when the bucket is full again. A request may go once it fits in the burst, or,
-- if it is bigger than the burst, once the bucket is full (it then goes into debt).
if pace_r > 0 then
  local tat = math.max(tonumber(s[1] or '0'), start)
  tat_r = tat + 60000 / (pace_r * scale)
  send = math.max(send, math.min(tat_r - burst, tat))
end
if pace_t > 0 then
  local tat = math.max(tonumber(s[2] or '0'), start)
  tat_t = tat + cost * 60000 / (pace_t * scale)
  send = math.max(send, math.min(tat_t - burst, tat))
end
-- Never scheduled further ahead than `ahead`: an idle host holds nothing for long.
if send - now > ahead then
  return {2, math.ceil(send - now - ahead), used_t, used_r, 0, rpm, tpm, now, 0, billed,
          charge, counts, accounting}
end
if tat_r then redis.call('HSET', lim, 'tat_r', tat_r) end
redis.call('HINCRBY', day, 'o:' .. ARGV[17], cost)
local hold = now + tonumber(ARGV[19])
if hold > tonumber(redis.call('ZSCORE', KEYS[6], ARGV[17]) or '0') then
  redis.call('ZADD', KEYS[6], hold, ARGV[17])
end
redis.call('EXPIRE', KEYS[6], tonumber(ARGV[15]))
if tat_t then redis.call('HSET', lim, 'tat_t', tat_t) end
if scale < 1 then redis.call('HSET', lim, 'scale', scale, 'scale_at', now) end
redis.call('PEXPIRE', lim, tonumber(ARGV[14]))
redis.call('HINCRBY', day, 'tokens', cost)
redis.call('HINCRBY', day, 'charge', cost)
redis.call('HINCRBY', day, 'requests', 1)
redis.call('HINCRBY', day, 'h:' .. ARGV[2], 1)
redis.call('HSET', day, 'tpd', tpd, 'rpd', rpd)
redis.call('EXPIRE', day, tonumber(ARGV[15]))
redis.call('ZADD', KEYS[3], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[14]))
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[14]))
redis.call('SADD', KEYS[4], ARGV[3])
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[15]))
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[15]))
return {0, math.ceil(send - now), used_t + cost, used_r + 1, 0, rpm, tpm, now, 0,
        billed + cost, charge + cost, counts, accounting}
"""

# KEYS: lim, day, epoch, open
# ARGV: epoch, tokens given back, requests given back, kind (0 plain, 1 per-minute 429,
#       2 per-day 429, 3 per-day 429 about requests), hint ms, admitted at (server ms),
#       rpm seen, tpm seen, burst ms,
#       lim ttl ms, day ttl s, instance, tokens closed, write number (totals: see `carried`),
#       charge given back
# Returns: status (0 ok, 3 state lost), pause ms (kind 1: how long every host now waits),
#          the day's billed tokens and charge (after this write).
SETTLE = CLOSE + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {3, 0, 0, 0} end
local lim, day = KEYS[1], KEYS[2]
local d_tokens, d_requests, d_closed, d_charge = carried(day, ARGV[12], tonumber(ARGV[14]),
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[13]), tonumber(ARGV[15]),
  tonumber(ARGV[11]))
close(day, KEYS[4], ARGV[12], d_closed)
local kind = tonumber(ARGV[4])
if d_tokens ~= 0 then redis.call('HINCRBY', day, 'tokens', d_tokens) end
if d_requests ~= 0 then redis.call('HINCRBY', day, 'requests', d_requests) end
if d_charge ~= 0 then redis.call('HINCRBY', day, 'charge', d_charge) end
-- 'exhausted' 2: the day was spent by the API's request limit (RPD), so a later stop on it
-- names that limit, not the token budget (ledger.EXHAUSTED_REQUESTS).
if kind == 2 or kind == 3 then redis.call('HSET', day, 'exhausted', kind - 1) end
if kind >= 2 or d_tokens ~= 0 or d_requests ~= 0 or d_charge ~= 0 then
  redis.call('EXPIRE', day, tonumber(ARGV[11]))
end
-- A lower limit one host was told is every host's limit.
for i, field in ipairs({'rpm', 'tpm'}) do
  local seen = tonumber(ARGV[6 + i])
  if seen > 0 then
    local known = tonumber(redis.call('HGET', lim, field) or '0')
    if known == 0 or seen < known then redis.call('HSET', lim, field, seen) end
  end
end
local pause = 0
if kind == 1 then
  local s = redis.call('HMGET', lim, 'cool_until', 'cool_start', 'streak', 'last429', 'scale',
                       'scale_at')
  local cool_until = tonumber(s[1] or '0')
  local hint = math.min(tonumber(ARGV[5]), 60000)
  if tonumber(ARGV[6]) < tonumber(s[2] or '0') then
    -- Admitted before the current cooldown began: an echo of the same overload.
    cool_until = math.max(cool_until, now + hint)
  else
    local streak = tonumber(s[3] or '0') + 1
    -- batchrun.pacing.backoff.backoff_s in milliseconds (Lua's 2 ^ n reaches inf, never an error)
    local backoff = math.min(60000, 500 * 2 ^ (streak - 1))
    cool_until = math.max(cool_until, now + math.max(hint, backoff))
    local scale = tonumber(s[5] or '1')
    if scale < 1 then scale = math.min(1, scale + (now - tonumber(s[6] or now)) * 0.000005) end
    if now - tonumber(s[4] or '0') < 30000 then scale = math.max(0.3, scale * 0.85) end
    redis.call('HSET', lim, 'streak', streak, 'cool_start', now, 'last429', now,
               'scale', scale, 'scale_at', now)
    -- The server's bucket is empty: no host has a burst left.
    local full = now + tonumber(ARGV[9])
    for _, field in ipairs({'tat_r', 'tat_t'}) do
      local tat = tonumber(redis.call('HGET', lim, field) or '0')
      if tat < full then redis.call('HSET', lim, field, full) end
    end
  end
  redis.call('HSET', lim, 'cool_until', cool_until)
  pause = cool_until - now
end
redis.call('PEXPIRE', lim, tonumber(ARGV[10]))
local u = redis.call('HMGET', day, 'tokens', 'charge')
return {0, math.ceil(pause), tonumber(u[1] or '0'), tonumber(u[2] or '0')}
"""

# KEYS: pairs of (name before key-derived names, name now): day, lim, hosts, open; then the old
#       scopes set of the day and this key's scopes set of the day
# ARGV: the scope's member in the old set, its member in the new set, day ttl s
# Renames each old key whose new name is not taken yet: a job mid-day keeps its usage, learned
# limits and reservations in flight across the upgrade (RENAME keeps each key's expiry).
MIGRATE = """
for i = 1, 7, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 and redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('RENAME', KEYS[i], KEYS[i + 1])
  end
end
if redis.call('SREM', KEYS[9], ARGV[1]) == 1 then
  redis.call('SADD', KEYS[10], ARGV[2])
  redis.call('EXPIRE', KEYS[10], tonumber(ARGV[3]))
end
return 0
"""
