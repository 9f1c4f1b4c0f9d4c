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
local i = 6
while i + 11 <= #ARGV do
  local pr, eid, id, act, a1, a2 = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  local att, pid, ec, code, cost, cur = ARGV[i + 6], ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10], ARGV[i + 11]
  i = i + 12
  local key = P .. 'ready:' .. ch .. ':' .. pr
  if owned(key, eid) then
    applied = applied + 1
    ack(key, eid)
    local rk = P .. 'n:' .. id
    if redis.call('EXISTS', rk) == 1 then
      local attno
      if att ~= '' then
        attno = redis.call('HINCRBY', rk, 'a', 1)
        redis.call('HINCRBY', rk, 'ca', 1)
        redis.call('RPUSH', P .. 'ev:' .. id, 'a' .. att)
      else
        attno = tonumber(redis.call('HGET', rk, 'a')) or 0
      end
      local cst = tonumber(redis.call('HGET', rk, 's'))
      if act == 'sent' then
        local nst = tonumber(a1)
        if pid ~= '' then redis.call('HSET', rk, 'pid', pid) end
        local c = tonumber(cost) or 0
        if c ~= 0 then
          redis.call('HINCRBY', rk, 'cost', c)
          redis.call('HSET', rk, 'cur', cur)
          local cmp = str(redis.call('HGET', rk, 'cmp'))
          if cmp ~= '' then redis.call('HINCRBY', P .. 'camp:' .. cmp, 'cost', c) end
        end
        if may_move(cst, nst) then
          set_status(id, nst)
          emit(id, nst, NOW, pid, '', '', attno, c, cur)
        end
        retain(id)
      elseif act == 'retry' then
        set_status(id, 5)
        redis.call('ZADD', P .. 'delayed', tonumber(a1), id)
        emit(id, 5, NOW, '', ec, code, attno)
      elseif act == 'fallback' then
        redis.call('HSET', rk, 'ri', a1, 'ca', 0)
        set_status(id, 3, a2)
        redis.call('XADD', P .. 'ready:' .. a2 .. ':' .. pr, '*', 'id', id)
      elseif act == 'fail' then
        set_status(id, 10)
        if a1 == '1' then
          redis.call('XADD', P .. 'dead:' .. ch, 'MAXLEN', '~', 100000, '*',
            'id', id, 'ec', ec, 'code', code, 'msg', a2, 'at', NOW)
        end
        emit(id, 10, NOW, '', ec, code, attno)
        retain(id)
      elseif act == 'final' then
        local nst = tonumber(a1)
        set_status(id, nst)
        emit(id, nst, NOW)
        retain(id)
      elseif act == 'requeue' then
        set_status(id, 3)
        redis.call('XADD', key, '*', 'id', id)
      end
    end
  end
end
return applied
