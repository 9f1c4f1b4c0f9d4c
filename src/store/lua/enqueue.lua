-- ARGV[4] = idempotency TTL (ms), ARGV[5] = shared content TTL (ms); then 12 per item:
-- id, idem key ('' = none), fingerprint, record blob, first channel, priority, due (ms),
-- expire_at (ms), campaign, labels blob, shared content hash ('' = content in the record),
-- content blob ('' = sent with an earlier item).
-- Fields with their default value (0, '') are not written: readers treat absent as default,
-- and small records stay in Redis's compact hash encoding.
-- An item is created SCHEDULED when due is after now, QUEUED otherwise; the caller knows
-- that, so the reply only names the items that were not created: per such item its place
-- (1-based), kind (dup | conflict), the id it already has, and that one's status.
-- Items with marked ids (made by the caller for a run of like campaign notifications, see
-- prelude.lua) are packed into their bucket when they fit and match what the bucket's
-- records share; the others get keys of their own.
local ittl, cttl = ARGV[4], ARGV[5]
local out = {}
-- Per bucket this script fills: what its records share (false: a bucket made before this
-- script, left alone), and the fields to write, header first: one HSET per bucket at the end.
-- PENDING: the status of each item packed so far (its bucket is written at the end).
local SHARED, PACK, PENDING = {}, {}, {}
local function pack_into(id, ch, pr, cmp, cn, exp, lb)
  local bk, fld = bucket_of(id)
  local sig = table.concat({ch, pr, cmp, cn, exp, lb}, '\0')
  local have = SHARED[bk]
  if have == nil then
    if redis.call('EXISTS', bk) == 1 then
      have = false
    else
      have = sig
      local f = {'c', ch, 'p', pr, 'm', cmp, 'n', cn}
      if exp ~= '' then f[#f + 1] = 'e'; f[#f + 1] = exp end
      if lb ~= '' then f[#f + 1] = 'l'; f[#f + 1] = lb end
      PACK[bk] = f
    end
    SHARED[bk] = have
  end
  if have ~= sig then return nil end
  return PACK[bk], fld
end
local function packable(id, blob, cmp, cn, exp, lb)
  return marked(id) and cn ~= '' and #blob <= PACKED_MAX and #cmp <= 64 and #cn <= 64
    and #exp <= 64 and #lb <= 64
end
local item = 0
local i = 6
while i + 11 <= #ARGV do
  item = item + 1
  local id, idem, fp, blob = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ch, pr, due, exp = ARGV[i + 4], ARGV[i + 5], tonumber(ARGV[i + 6]), ARGV[i + 7]
  local cmp, lb = ARGV[i + 8], ARGV[i + 9]
  local cn, cblob = ARGV[i + 10], ARGV[i + 11]
  i = i + 12
  local done = false
  if idem ~= '' then
    local ik = P .. 'idem:' .. idem
    local v = redis.call('GET', ik)
    if v then
      local sep = string.find(v, '|', 1, true)
      local id0 = string.sub(v, 1, sep - 1)
      if string.sub(v, sep + 1) ~= fp then
        out[#out + 1] = {item, 'conflict', id0, 0}
      else
        local r0 = load(id0)
        local st0 = r0 and r0.s or PENDING[id0] or 1
        out[#out + 1] = {item, 'dup', id0, st0}
      end
      done = true
    else
      redis.call('SET', ik, id .. '|' .. fp, 'PX', ittl)
    end
  end
  if not done then
    local st = 3
    if due > NOW then st = 2 end
    if exp == '0' then exp = '' end
    local bf, fld
    if packable(id, blob, cmp, cn, exp, lb) then bf, fld = pack_into(id, ch, pr, cmp, cn, exp, lb) end
    if bf then
      bf[#bf + 1] = fld
      bf[#bf + 1] = txt(st) .. blob
      PENDING[id] = st
    else
      -- A record blob up to 256 bytes goes in 64-byte parts (d, d1, d2, d3), read back joined.
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
    if cn ~= '' and cblob ~= '' then
      -- Written once; every later use only makes it live long enough.
      local ck = P .. 'cn:' .. cn
      if not redis.call('SET', ck, cblob, 'NX', 'PX', cttl) then
        redis.call('PEXPIRE', ck, cttl, 'GT')
      end
    end
    if st == 2 then
      redis.call('ZADD', P .. 'delayed', due, id)
    else
      redis.call('XADD', ready(ch, pr), '*', 'id', id)
    end
    count(cmp, '', nil, ch, st)
  end
end
for bk, f in pairs(PACK) do redis.call('HSET', bk, unpack(f)) end
return out
