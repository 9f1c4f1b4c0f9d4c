-- ARGV[4] = idempotency TTL (ms), ARGV[5] = shared content TTL (ms); then items, each either
-- * one notification, 12 arguments: id, idem key ('' = none), fingerprint, record blob, first
--   channel, priority, due (ms), expire_at (ms), campaign, labels blob, shared content hash
--   ('' = content in the record), content blob ('' = sent with an earlier item); or
-- * a run of like campaign notifications whose ids were made for one bucket (see prelude.lua,
--   "Packed records"): 'r' (with idempotency keys) or 'q' (without), how many, then what they
--   share: first channel, priority, expire_at, campaign, labels blob, shared content hash,
--   content blob; then per notification id, record blob, due and, for 'r', idem key and
--   fingerprint. What a run shares is passed once, and its records go into the bucket in one
--   HSET: most of a SendBatch or SendStream call's work in Redis is then per run, not per item;
-- * 's' and a shard prefix: the items after it are that shard's (a call over several shards,
--   on one Redis only).
-- Fields with their default value (0, '') are not written: readers treat absent as default,
-- and small records stay in Redis's compact hash encoding.
-- An item is created SCHEDULED when due is after now, QUEUED otherwise; the caller knows
-- that, so the reply only names the items that were not created: per such item its place
-- (1-based), kind (dup | conflict), the id it already has, and that one's status.
local ittl, cttl = ARGV[4], ARGV[5]
local out = {}
-- The status of each record packed so far: its bucket is written at the run's end.
local PENDING = {}
local item = 0

-- Whether item `item` with this id and idempotency key is new; if not, the reply names it.
-- One SET NX GET both claims the key and reads an earlier holder (Redis 7.0; a GET then a
-- SET was one call more per Send).
local function fresh(id, idem, fp)
  if idem == '' then return true end
  local v = redis.call('SET', P .. 'idem:' .. idem, id .. '|' .. fp, 'NX', 'GET', 'PX', ittl)
  if not v then return true end
  local sep = string.find(v, '|', 1, true)
  local id0 = string.sub(v, 1, sep - 1)
  if string.sub(v, sep + 1) ~= fp then
    out[#out + 1] = {item, 'conflict', id0, 0}
  else
    local r0 = load(id0)
    out[#out + 1] = {item, 'dup', id0, r0 and r0.s or PENDING[id0] or 1}
  end
  return false
end

local function status_at(due)
  if due > NOW then return 2 end
  return 3
end

-- A record in a key of its own. A record blob up to 256 bytes goes in 64-byte parts (d, d1,
-- d2, d3), read back joined.
local function own_key(id, st, blob, ch, pr, exp, cmp, lb, cn)
  local f = {'s', txt(st), 'c', ch, 'p', pr}
  if #blob > 256 then
    f[#f + 1] = 'd'
    f[#f + 1] = blob
  else
    put_parts(f, 'd', blob, record_part)
  end
  if cmp ~= '' then f[#f + 1] = 'cmp'; f[#f + 1] = cmp end
  if exp ~= '' then f[#f + 1] = 'exp'; f[#f + 1] = exp end
  if lb ~= '' then f[#f + 1] = 'lb'; f[#f + 1] = lb end
  if cn ~= '' then f[#f + 1] = 'cn'; f[#f + 1] = cn end
  redis.call('HSET', P .. 'n:' .. id, unpack(f))
end

local function keep_content(cn, cblob)
  if cn ~= '' and cblob ~= '' then
    -- Written once; every later use only makes it live long enough.
    local ck = P .. 'cn:' .. cn
    if not redis.call('SET', ck, cblob, 'NX', 'PX', cttl) then
      redis.call('PEXPIRE', ck, cttl, 'GT')
    end
  end
end

local function queue(id, st, due, ch, pr)
  if st == 2 then
    redis.call('ZADD', P .. 'delayed', due, id)
  else
    redis.call('XADD', ready(ch, pr), '*', 'id', id)
  end
end

-- A run at ARGV[k]; returns the index after it.
local function run(k)
  local with_idem = ARGV[k] == 'r'
  local n = tonumber(ARGV[k + 1])
  local ch, pr, exp, cmp = ARGV[k + 2], ARGV[k + 3], ARGV[k + 4], ARGV[k + 5]
  local lb, cn, cblob = ARGV[k + 6], ARGV[k + 7], ARGV[k + 8]
  if exp == '0' then exp = '' end
  keep_content(cn, cblob)
  -- The bucket is named by the first id; a record goes in only if its id is of that bucket and
  -- it fits, and none does if the bucket is there already (made by another call).
  local shared = cn ~= '' and #cmp <= 64 and #cn <= 64 and #exp <= 64 and #lb <= 64
  local pre, bk, f
  local made = {0, 0, 0}
  local j = k + 9
  for _ = 1, n do
    item = item + 1
    local id, blob, due = ARGV[j], ARGV[j + 1], tonumber(ARGV[j + 2])
    local idem, fp = '', ''
    if with_idem then
      idem, fp = ARGV[j + 3], ARGV[j + 4]
      j = j + 5
    else
      j = j + 3
    end
    if fresh(id, idem, fp) then
      local st = status_at(due)
      made[st] = made[st] + 1
      if shared and not pre and marked(id) then
        pre = string.sub(id, 1, 18)
        bk = P .. 'b:' .. pre
        if redis.call('EXISTS', bk) == 1 then
          shared = false
        else
          f = {'c', ch, 'p', pr, 'm', cmp, 'n', cn}
          if exp ~= '' then f[#f + 1] = 'e'; f[#f + 1] = exp end
          if lb ~= '' then f[#f + 1] = 'l'; f[#f + 1] = lb end
        end
      end
      if shared and #blob <= PACKED_MAX and string.sub(id, 1, 18) == pre then
        f[#f + 1] = string.sub(id, 19, 26)
        f[#f + 1] = txt(st) .. blob
        PENDING[id] = st
      else
        own_key(id, st, blob, ch, pr, exp, cmp, lb, cn)
      end
      queue(id, st, due, ch, pr)
    end
  end
  if f and #f > 0 then redis.call('HSET', bk, unpack(f)) end
  for st = 2, 3 do count(cmp, '', nil, ch, st, made[st]) end
  return j
end

local i = 6
while i <= #ARGV do
  if ARGV[i] == 'r' or ARGV[i] == 'q' then
    i = run(i)
  elseif ARGV[i] == 's' then
    -- The items after it are of shard prefix ARGV[i + 1] (one Redis, never a cluster: see
    -- merge_small_enqueues in redis.rs). What this shard counted is written first.
    flush_counts()
    P = ARGV[i + 1]
    READY = {}
    i = i + 2
  else
    item = item + 1
    local id, idem, fp, blob = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
    local ch, pr, due, exp = ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6]), ARGV[i + 7]
    local cmp, lb = ARGV[i + 8], ARGV[i + 9]
    local cn, cblob = ARGV[i + 10], ARGV[i + 11]
    i = i + 12
    if exp == '0' then exp = '' end
    if fresh(id, idem, fp) then
      local st = status_at(due)
      own_key(id, st, blob, ch, pr, exp, cmp, lb, cn)
      keep_content(cn, cblob)
      queue(id, st, due, ch, pr)
      count(cmp, '', nil, ch, st, 1)
    end
  end
end
return out
