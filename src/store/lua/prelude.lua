-- Shared by every Herald function: the top of the `herald_<hash>` function library (see
-- `Library` in redis.rs). It runs once, when the library is loaded; each call then starts
-- with `begin`. KEYS[1] is the shard prefix `herald:{s}:`: every key a call touches starts
-- with it, so one call stays in one hash slot (Redis Cluster). ARGV[1] = now (ms), ARGV[2] =
-- receipts stream cap, ARGV[3] = retention of finished records (ms).
--
-- What a call reads and gathers lives in the locals below and is reset by `begin`: Redis
-- runs one call at a time, and a call that failed half way leaves nothing to the next.
local ARGV, P, NOW, MAXR, KEEP, NOWS, RECEIPTS
local TALLY, READY, CXL, UNPACKED, ACKS
local GROUP = 'herald'

-- Status numbers match model::Status. Rank: a receipt only moves a notification up.
local RANK = {0, 1, 1, 2, 1, 3, 5, 6, 7, 4, 8, 8, 8}
local function may_move(cur, nxt)
  if cur == nil then return false end
  if cur == 11 or cur == 12 or cur == 13 then return false end
  if cur == 10 then return nxt == 7 or nxt == 8 or nxt == 9 end
  return RANK[nxt] > RANK[cur]
end

-- Numbers go to Redis as text made without Lua's floating-point formatting (%.14g: a tenth
-- of Redis's CPU in the dispatch scripts went to printf): statuses and small counts from a
-- table, the rest as integers.
local NUM = {[0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12', '13',
  '14', '15', '16'}
local function txt(v)
  if type(v) ~= 'number' then return v end
  return NUM[v] or string.format('%d', v)
end

-- t[k], a table made on first use.
local function sub(t, k)
  local v = t[k]
  if not v then
    v = {}
    t[k] = v
  end
  return v
end

-- Calls f(from, to) over `list` in runs of at most 1,000: unpack() is bounded by Lua's stack.
local function in_runs(list, f)
  for from = 1, #list, 1000 do
    f(from, math.min(from + 999, #list))
  end
end

-- Ready stream keys by channel and priority, made once per call.
local function ready(ch, pr)
  local by = sub(READY, ch)
  local k = by[pr]
  if not k then
    k = P .. 'ready:' .. ch .. ':' .. pr
    by[pr] = k
  end
  return k
end

-- Campaign counters: current status, and current status per channel. Summed in TALLY while
-- the script runs and written once per campaign and field by flush_counts at its end. Their
-- fields, `s<status>` and `c<channel>:<status>`, are made once: they do not depend on the
-- call.
local SF = {}
for st = 0, 16 do SF[st] = 's' .. NUM[st] end
local CF = {}
local function cfields(ch)
  local t = CF[ch]
  if not t then
    t = {}
    for st = 0, 16 do t[st] = 'c' .. ch .. ':' .. NUM[st] end
    CF[ch] = t
  end
  return t
end

-- Counts `n` (default 1) notifications of campaign `cmp` moving from status `ost` on channel
-- `och` (nil: new) to `nst` on `nch`, in TALLY[cmp][field]. It reaches the tallies without
-- layers of helpers: a Lua function call costs hundreds of instructions, and counting through
-- four layers of them was a tenth of finish's (cost.py --instructions).
local function count(cmp, och, ost, nch, nst, n)
  n = n or 1
  if cmp == '' or n == 0 then return end
  local t = sub(TALLY, cmp)
  local f
  if ost then
    f = SF[ost]
    t[f] = (t[f] or 0) - n
    if och ~= '' then
      f = cfields(och)[ost]
      t[f] = (t[f] or 0) - n
    end
  else
    t.total = (t.total or 0) + n
  end
  f = SF[nst]
  t[f] = (t[f] or 0) + n
  if nch ~= '' then
    f = cfields(nch)[nst]
    t[f] = (t[f] or 0) + n
  end
end

-- Whether campaign `cmp` was canceled (asked once per script and campaign).
local function canceled(cmp)
  if cmp == '' then return false end
  local v = CXL[cmp]
  if v == nil then
    v = redis.call('EXISTS', P .. 'cxl:' .. cmp) == 1
    CXL[cmp] = v
  end
  return v
end

local function flush_counts()
  for cmp, t in pairs(TALLY) do
    local k = P .. 'camp:' .. cmp
    for field, n in pairs(t) do
      if n ~= 0 then redis.call('HINCRBY', k, field, txt(n)) end
    end
  end
  TALLY = {}
end

-- Redis keeps a hash compact only while every value is at most 64 bytes. Appends field `k` =
-- `v` to the field list `f` in 64-byte parts: `k`, then name(k, 1), name(k, 2), ...
local function put_parts(f, k, v, name)
  local n = #f
  f[n + 1] = k
  if #v <= 64 then
    f[n + 2] = v
    return
  end
  f[n + 2] = string.sub(v, 1, 64)
  n = n + 2
  local part, from = 1, 65
  while from <= #v do
    f[n + 1] = name(k, part)
    f[n + 2] = string.sub(v, from, from + 63)
    n = n + 2
    part = part + 1
    from = from + 64
  end
end

-- Queues field `k` = `v` of a loaded record for `save`.
local function put(r, k, v)
  r.set[#r.set + 1] = k
  r.set[#r.set + 1] = v
end

-- Record blob parts after `d` (a blob of 65 to 256 bytes): d1, d2, d3.
local PART = {'d1', 'd2', 'd3'}
local function record_part(_, i) return PART[i] end

-- Packed records. A queued campaign notification that shares its content, channel, priority,
-- campaign, expiry and labels with the others of its batch may live as one field of a bucket
-- hash instead of a key of its own (a key costs ~110 bytes before its first field): bucket
-- `b:<first 18 characters of the id>` (the ULID's time and 40 random bits), field the next 8
-- characters, value the status digit then the record blob (at most 63 bytes, so the bucket
-- stays in Redis's compact encoding). What the bucket's records share is its header: fields
-- c, p, m (campaign), n (content hash), e (expiry), l (labels blob). Ids made for buckets
-- carry a mark (the 11th character, the first random one, is G or later); no other id does.
-- A packed record is unpacked into its own key the first time it changes (`save`).
local PACKED_MAX = 63
local HEAD = {'c', 'p', 'm', 'n', 'e', 'l'}
local function marked(id) return #id >= 26 and string.byte(id, 11) >= 71 end
local function bucket_of(id)
  return P .. 'b:' .. string.sub(id, 1, 18), string.sub(id, 19, 26)
end

-- A loaded record (the shape `load` returns) from bucket header `h` (HEAD's values, in order)
-- and packed value `v`; its fields are queued so that `save` writes them all to its own key.
local function from_packed(id, bk, fld, h, v)
  local c, p, cmp = h[1] or '', h[2] or '', h[3] or ''
  local cn, exp, lb = h[4] or '', h[5] or '', h[6] or ''
  local r = {id = id, rk = P .. 'n:' .. id, s = tonumber(string.sub(v, 1, 1)), c = c, cmp = cmp,
    lb = lb, a = 0, ca = 0, p = p, hn = 0, set = {'c', c, 'p', p}, hist = {}, legacy = false,
    bk = bk, fld = fld, blob = string.sub(v, 2), cn = cn, exp = exp}
  put_parts(r.set, 'd', r.blob, record_part)
  if cmp ~= '' then put(r, 'cmp', cmp) end
  if cn ~= '' then put(r, 'cn', cn) end
  if exp ~= '' then put(r, 'exp', exp) end
  if lb ~= '' then put(r, 'lb', lb) end
  return r
end

-- Reads bucket `bk`'s header and fields `flds` in one call: {header, values}.
local function read_bucket(bk, flds)
  local f = redis.call('HMGET', bk, 'c', 'p', 'm', 'n', 'e', 'l', unpack(flds))
  local vals = {}
  for k = 1, #flds do vals[k] = f[6 + k] end
  return f, vals
end

-- Fields unpacked this script, per bucket: one HDEL per bucket at the script's end, and the
-- bucket goes when only its header is left.
local function flush_unpacked()
  for bk, flds in pairs(UNPACKED) do
    in_runs(flds, function(from, to)
      redis.call('HDEL', bk, unpack(flds, from, to))
    end)
    if redis.call('HLEN', bk) <= #HEAD then
      local only_head = true
      for _, k in ipairs(redis.call('HKEYS', bk)) do
        if #k > 1 then only_head = false end
      end
      if only_head then redis.call('DEL', bk) end
    end
  end
  UNPACKED = {}
end

-- The fields of record `id` most steps need, read in one call (nil: the record is gone).
-- Writes to it are queued with put/move/receipt and made by save: one HSET however many
-- fields and history entries a step changes.
local function load(id)
  local rk = P .. 'n:' .. id
  local f = redis.call('HMGET', rk, 's', 'c', 'cmp', 'lb', 'a', 'ca', 'p', 'hn')
  local s = tonumber(f[1])
  if not s then
    if not marked(id) then return nil end
    local bk, fld = bucket_of(id)
    local h, v = read_bucket(bk, {fld})
    if not v[1] then return nil end
    return from_packed(id, bk, fld, h, v[1])
  end
  local a = tonumber(f[5]) or 0
  local hn = tonumber(f[8]) or 0
  return {id = id, rk = rk, s = s, c = f[2] or '', cmp = f[3] or '', lb = f[4] or '',
    a = a, ca = tonumber(f[6]) or 0, p = f[7] or '', hn = hn, set = {}, hist = {},
    -- Written before history moved into the record: it may have an `ev:` list (below).
    legacy = hn == 0 and a > 0}
end

-- Moves a loaded record to status `nst` (and channel `nch` when given), keeping counters.
local function move(r, nst, nch)
  count(r.cmp, r.c, r.s, nch or r.c, nst)
  put(r, 's', txt(nst))
  if nch then
    put(r, 'c', nch)
    r.c = nch
  end
  r.s = nst
end

-- A receipt goes to the shard's receipt stream and to the notification's history, both as
-- one string, `st ch at pid ec code att cost cur` joined by \31: a stream entry of four
-- fields (id, r, cmp, lb) instead of twelve costs less to pass, to add and to keep.
-- `st` and `att` are numbers, `at` and `cost` text.
local function receipt_text(st, ch, at, pid, ec, code, att, cost, cur)
  return NUM[st] .. '\31' .. ch .. '\31' .. at .. '\31' .. (pid or '') .. '\31' ..
    (ec or '') .. '\31' .. (code or '') .. '\31' .. (NUM[att or 0] or txt(att)) .. '\31' ..
    (cost or '0') .. '\31' .. (cur or '')
end

local function add_receipt(id, e, cmp, lb)
  redis.call('XADD', RECEIPTS, 'MAXLEN', '~', MAXR, '*', 'id', id, 'r', e, 'cmp', cmp, 'lb', lb)
end

-- A receipt of a loaded record: to the stream now, to its history at save.
local function receipt(r, st, at, pid, ec, code, att, cost, cur)
  local e = receipt_text(st, r.c, at, pid, ec, code, att, cost, cur)
  add_receipt(r.id, e, r.cmp, r.lb)
  r.hist[#r.hist + 1] = 'r' .. e
end

-- History entries go into the record itself, as fields h1, h2, ... (`hn` counts them), each
-- in 64-byte parts (h1, h1.1, h1.2, ...) so the hash stays in Redis's compact encoding: no
-- list key of its own, so no RPUSH and no second PEXPIRE per notification.
local function history_part(k, i) return k .. '.' .. txt(i) end
-- History field names h1 ... h16, made once.
local HIST = {}
for i = 1, 16 do HIST[i] = 'h' .. NUM[i] end
local function history_field(n) return HIST[n] or ('h' .. txt(n)) end

local function save(r)
  if #r.hist > 0 then
    local n = r.hn
    for _, e in ipairs(r.hist) do
      n = n + 1
      put_parts(r.set, history_field(n), e, history_part)
    end
    put(r, 'hn', txt(n))
    r.hn = n
  end
  if #r.set > 0 then redis.call('HSET', r.rk, unpack(r.set)) end
  r.set = {}
  r.hist = {}
  if r.bk then
    local t = sub(UNPACKED, r.bk)
    t[#t + 1] = r.fld
    r.bk = nil
  end
end

-- A finished record is kept for `KEEP` ms for GetNotification, then goes. A record written
-- before history moved into it may still have its history in an `ev:` list: that goes too.
local function retain(r)
  redis.call('PEXPIRE', r.rk, KEEP)
  if r.legacy then redis.call('PEXPIRE', P .. 'ev:' .. r.id, KEEP) end
end

-- Ends a loaded record at status `st` now: its receipt, written, kept for `KEEP` ms.
local function close(r, st)
  move(r, st)
  receipt(r, st, NOWS)
  save(r)
  retain(r)
end

-- Acknowledged ready-stream entries, per stream: one XACK per stream at the script's end
-- (flush_acks), however many entries a batch finishes.
local function ack(key, eid)
  local t = sub(ACKS, key)
  t[#t + 1] = eid
end

-- The herald group of stream `key`: {pending, last delivered id, lag (false when Redis cannot
-- tell)}, or nil when the stream or the group is not there.
local function group_of(key)
  local gs = redis.pcall('XINFO', 'GROUPS', key)
  if type(gs) ~= 'table' or gs.err then return nil end
  for _, g in ipairs(gs) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f.name == GROUP then
      return {pending = f.pending or 0, last = f['last-delivered-id'], lag = f.lag}
    end
  end
  return nil
end

-- Acknowledged entries leave their stream by trimming its head, not one XDEL each: XDEL
-- finds every entry from the start of its listpack node (a sixth of finish's instructions).
-- Every entry before the oldest one still pending, or before the last delivered one when
-- none is pending, has been acknowledged: a pending entry was delivered, so it is never after
-- the last delivered. `~` frees whole nodes only (cheap; a node's acknowledged entries wait
-- for the rest of it); a stream with nothing pending and nothing unread is emptied.
local function trim(key)
  local g = group_of(key)
  if not g or not g.last then return end
  if g.pending == 0 and g.lag == 0 then
    redis.call('XTRIM', key, 'MAXLEN', 0)
    return
  end
  local low = g.last
  if g.pending > 0 then
    -- The oldest pending entry (the summary form would also walk every consumer).
    local p = redis.call('XPENDING', key, GROUP, '-', '+', 1)
    if p[1] then low = p[1][1] end
  end
  redis.call('XTRIM', key, 'MINID', '~', low)
end

local function flush_acks()
  for key, eids in pairs(ACKS) do
    in_runs(eids, function(from, to)
      redis.call('XACK', key, GROUP, unpack(eids, from, to))
    end)
    trim(key)
  end
  ACKS = {}
end

local function ensure_group(key)
  -- BUSYGROUP (it exists already) is fine.
  redis.pcall('XGROUP', 'CREATE', key, GROUP, '0', 'MKSTREAM')
end

-- The start of every call: its keys and arguments, and empty per-call state. Field-name
-- caches (SF, CF) do not depend on the call and are kept.
local function begin(keys, args)
  ARGV = args
  P = keys[1]
  NOW = tonumber(args[1])
  NOWS = args[1]
  MAXR = args[2]
  KEEP = args[3]
  RECEIPTS = P .. 'receipts'
  TALLY, READY, CXL, UNPACKED, ACKS = {}, {}, {}, {}, {}
end

-- The end of every call: the campaign counters it moved, one HINCRBY per campaign and field;
-- the ready-stream entries it acknowledged, one XACK and one trim per stream; the packed
-- records it unpacked, one HDEL per bucket.
local function done(reply)
  flush_counts()
  flush_acks()
  flush_unpacked()
  return reply
end
