-- ARGV[4] = channel, ARGV[5] = consumer; then 12 per item: priority, entry id, notification id,
-- action, a1, a2, attempt blob ('' = no platform call), provider id, error class, error code,
-- cost (micros), currency. Actions:
--   sent a1=status · retry a1=due · fallback a1=route index a2=next channel
--   fail a1=1|0 (dead letter) a2=message · final a1=status · requeue
-- An entry this consumer no longer owns (another worker took it over) is skipped.
-- Returns how many items were applied.
local ch, consumer = ARGV[4], ARGV[5]
local applied = 0
-- The entries this consumer holds, per lane: read once per lane, not once per item.
local OWN = {}
local function owned(key, eid)
  local set = OWN[key]
  if not set then
    set = {}
    local r = redis.pcall('XPENDING', key, GROUP, '-', '+', 100000, consumer)
    if type(r) == 'table' and not r.err then
      for _, e in ipairs(r) do set[e[1]] = true end
    end
    OWN[key] = set
  end
  if set[eid] then
    set[eid] = nil
    return true
  end
  return false
end

-- The common case, a platform's acceptance of a notification whose record is a key of its
-- own: read, write, receipt and expiry without the loaded-record table of `load` and `save`
-- (a sixth of finish's Redis time went to building and walking it). The same fields,
-- history and receipt as the general path below; false when that path must do it (a packed
-- or gone record, or one whose history is still in an `ev:` list).
local function sent(id, nst, att, pid, cost, cur)
  local rk = P .. 'n:' .. id
  local f = redis.call('HMGET', rk, 's', 'c', 'cmp', 'lb', 'a', 'ca', 'hn')
  local s = tonumber(f[1])
  local a = tonumber(f[5]) or 0
  local hn = tonumber(f[7]) or 0
  if not s or (hn == 0 and a > 0) then return false end
  local c, cmp, h0 = f[2] or '', f[3] or '', hn
  local set = {}
  if att ~= '' then
    a = a + 1
    local ca = (tonumber(f[6]) or 0) + 1
    set[1], set[2], set[3], set[4] = 'a', NUM[a] or txt(a), 'ca', NUM[ca] or txt(ca)
    hn = hn + 1
    put_parts(set, history_field(hn), 'a' .. att, history_part)
  end
  if pid ~= '' then
    set[#set + 1] = 'pid'
    set[#set + 1] = pid
  end
  local spent = tonumber(cost) or 0
  if spent ~= 0 then
    redis.call('HINCRBY', rk, 'cost', cost)
    set[#set + 1] = 'cur'
    set[#set + 1] = cur
    if cmp ~= '' then redis.call('HINCRBY', P .. 'camp:' .. cmp, 'cost', cost) end
  end
  if may_move(s, nst) then
    count(cmp, c, s, c, nst)
    set[#set + 1] = 's'
    set[#set + 1] = NUM[nst]
    local e = receipt_text(nst, c, NOWS, pid, '', '', a, spent ~= 0 and cost or '0', cur)
    add_receipt(id, e, cmp, f[4] or '')
    hn = hn + 1
    put_parts(set, history_field(hn), 'r' .. e, history_part)
  end
  if hn ~= h0 then
    set[#set + 1] = 'hn'
    set[#set + 1] = NUM[hn] or txt(hn)
  end
  if #set > 0 then redis.call('HSET', rk, unpack(set)) end
  redis.call('PEXPIRE', rk, KEEP)
  return true
end

local i = 6
while i + 11 <= #ARGV do
  local pr, eid, id, act, a1, a2 = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local att, pid, ec, code, cost, cur = ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], ARGV[i + 11]
  i = i + 12
  local key = ready(ch, pr)
  if owned(key, eid) then
    applied = applied + 1
    ack(key, eid)
    -- One read of the record, one write of its fields, one append to its history.
    local r = not (act == 'sent' and sent(id, tonumber(a1), att, pid, cost, cur)) and load(id)
    if r then
      local attno = r.a
      if att ~= '' then
        attno = r.a + 1
        put(r, 'a', txt(attno))
        put(r, 'ca', txt(r.ca + 1))
        r.hist[#r.hist + 1] = 'a' .. att
      end
      if act == 'sent' then
        local nst = tonumber(a1)
        if pid ~= '' then put(r, 'pid', pid) end
        local c = tonumber(cost) or 0
        if c ~= 0 then
          redis.call('HINCRBY', r.rk, 'cost', cost)
          put(r, 'cur', cur)
          if r.cmp ~= '' then redis.call('HINCRBY', P .. 'camp:' .. r.cmp, 'cost', cost) end
        end
        if may_move(r.s, nst) then
          move(r, nst)
          receipt(r, nst, NOWS, pid, '', '', attno, c ~= 0 and cost or '0', cur)
        end
        save(r)
        retain(r)
      elseif act == 'retry' then
        move(r, 5)
        redis.call('ZADD', P .. 'delayed', a1, id)
        receipt(r, 5, NOWS, '', ec, code, attno)
        save(r)
      elseif act == 'fallback' then
        -- After the attempt counted above: the next channel starts at 0.
        put(r, 'ri', a1)
        put(r, 'ca', 0)
        move(r, 3, a2)
        save(r)
        redis.call('XADD', ready(a2, pr), '*', 'id', id)
      elseif act == 'fail' then
        move(r, 10)
        if a1 == '1' then
          redis.call('XADD', P .. 'dead:' .. ch, 'MAXLEN', '~', 100000, '*',
            'id', id, 'ec', ec, 'code', code, 'msg', a2, 'at', NOWS)
        end
        receipt(r, 10, NOWS, '', ec, code, attno)
        save(r)
        retain(r)
      elseif act == 'final' then
        close(r, tonumber(a1))
      elseif act == 'requeue' then
        move(r, 3)
        save(r)
        redis.call('XADD', key, '*', 'id', id)
      else
        save(r)
      end
    end
  end
end
return applied
