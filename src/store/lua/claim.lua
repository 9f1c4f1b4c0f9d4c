-- ARGV[4] = channel, ARGV[5] = consumer, ARGV[6] = how many, ARGV[7] = take over entries idle
-- this long (ms; 0 = no takeover), ARGV[8] = last lane to look at. HIGH lane (1) first, then
-- NORMAL (2), then BULK (3).
-- Returns {priority, entry id, record blob, route index, attempts, channel attempts, shared
-- content hash, notification id, campaign, labels} per claim;
-- canceled and expired notifications are finished here and not returned.
local ch, consumer, want, idle = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local last = tonumber(ARGV[8]) or 3
local out = {}
-- Consumers quiet this long with nothing pending are forgotten (see forget_quiet).
local FORGET_AFTER = idle * 10

local function read(key, n)
  local res = redis.pcall('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', n, 'STREAMS', key, '>')
  if type(res) == 'table' and res.err then
    if string.find(res.err, 'NOGROUP', 1, true) then
      -- The group vanished (Redis restarted empty, or a first start): recreate and go on.
      ensure_group(key)
      res = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', n, 'STREAMS', key, '>')
    else
      return redis.error_reply(res.err)
    end
  end
  if not res then return {} end
  return res[1][2]
end

-- Drops from the group the consumers that have been quiet for FORGET_AFTER and own nothing:
-- a process that died or was scaled away leaves its consumers behind, one per worker and
-- restart. A live worker that only has not read this stream for a while is made again by its
-- next read, so dropping it loses nothing; a consumer that still owns entries is kept until
-- the takeover above has moved them.
local function forget_quiet(key)
  local info = redis.pcall('XINFO', 'CONSUMERS', key, GROUP)
  if type(info) ~= 'table' or info.err then return end
  for _, c in ipairs(info) do
    local f = {}
    for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
    if f.name and f.name ~= consumer and f.pending == 0 and (f.idle or 0) > FORGET_AFTER then
      redis.call('XGROUP', 'DELCONSUMER', key, GROUP, f.name)
    end
  end
end

for pr = 1, last do
  if #out >= want then break end
  local key = ready(ch, pr)
  local entries = {}
  if idle > 0 and redis.call('EXISTS', key) == 1 then
    local r = redis.pcall('XAUTOCLAIM', key, GROUP, consumer, idle, '0-0', 'COUNT', want - #out)
    if type(r) == 'table' and r.err then
      ensure_group(key)
    else
      for _, e in ipairs(r[2]) do entries[#entries + 1] = e end
      forget_quiet(key)
    end
  end
  if #entries < want - #out then
    local got = read(key, want - #out - #entries)
    if got.err then return got end
    for _, e in ipairs(got) do entries[#entries + 1] = e end
  end
  -- Packed records of these entries: one read per bucket (a run of a campaign shares one).
  local packed = {}
  local want_b = {}
  for _, e in ipairs(entries) do
    local id = e[2] and e[2][2]
    if id and marked(id) then
      local bk, fld = bucket_of(id)
      local t = sub(want_b, bk)
      t[#t + 1] = fld
    end
  end
  for bk, flds in pairs(want_b) do
    local h, vals = read_bucket(bk, flds)
    for k, fld in ipairs(flds) do
      if vals[k] then packed[bk .. fld] = {h, vals[k]} end
    end
  end
  for _, e in ipairs(entries) do
    local eid, fl = e[1], e[2]
    local id = fl and fl[2]
    local pk
    if id and marked(id) then
      local bk, fld = bucket_of(id)
      pk = packed[bk .. fld]
      if pk then pk = from_packed(id, bk, fld, pk[1], pk[2]) end
    end
    if not id then
      ack(key, eid)
    elseif pk then
      -- Unpacked into its own key as it is claimed (save): from here on it changes.
      local exp = tonumber(pk.exp) or 0
      if pk.s ~= 3 and pk.s ~= 5 then
        ack(key, eid)
      elseif canceled(pk.cmp) then
        ack(key, eid)
        close(pk, 12)
      elseif exp > 0 and NOW >= exp then
        ack(key, eid)
        close(pk, 11)
      else
        move(pk, 4)
        save(pk)
        out[#out + 1] = {pr, eid, pk.blob, '', '', '', pk.cn, id, pk.cmp, pk.lb}
      end
    else
      local rk = P .. 'n:' .. id
      local f = redis.call('HMGET', rk, 's', 'cmp', 'exp', 'd', 'a', 'cn', 'lb', 'd1', 'c', 'ri')
      local st = tonumber(f[1])
      local cmp = f[2] or ''
      local exp = tonumber(f[3]) or 0
      if st ~= 3 and st ~= 4 and st ~= 5 then
        ack(key, eid)
      elseif canceled(cmp) then
        ack(key, eid)
        close(load(id), 12)
      elseif exp > 0 and NOW >= exp then
        ack(key, eid)
        close(load(id), 11)
      else
        local c = f[9] or ''
        if st ~= 4 then
          -- move() with the fields read above.
          redis.call('HSET', rk, 's', '4')
          count(cmp, c, st, c, 4)
        end
        -- A field Redis does not find costs it a walk over the whole record: the channel's
        -- attempts are there only after an attempt, blob parts d2 and d3 only after d1, so
        -- they are asked for only then.
        local blob, ca = f[4], ''
        if f[5] then ca = redis.call('HGET', rk, 'ca') or '' end
        if f[8] then
          local more = redis.call('HMGET', rk, 'd2', 'd3')
          blob = blob .. f[8] .. (more[1] or '') .. (more[2] or '')
        end
        out[#out + 1] = {pr, eid, blob, f[10] or '', f[5] or '', ca, f[6] or '', id, cmp,
          f[7] or ''}
      end
    end
  end
end
return out
