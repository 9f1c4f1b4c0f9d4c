-- ARGV[4] = channel; then pairs: dead-letter entry id (of the shard's `dead:<channel>`),
-- notification id. A notification still FAILED on that channel goes back to its ready stream
-- with that channel's attempts at 0, a QUEUED receipt and no expiry; its dead letter goes. A
-- dead letter whose notification moved on (redriven already) goes too; one whose record is
-- gone (past the retention of finished records) stays, for inspection.
-- Returns {redriven, gone}.
local ch = ARGV[4]
local redriven, gone = 0, 0
local drop = {}
for i = 5, #ARGV, 2 do
  local eid, id = ARGV[i], ARGV[i + 1]
  local r = load(id)
  if not r then
    gone = gone + 1
  else
    if r.s == 10 and r.c == ch then
      put(r, 'ca', '0')
      move(r, 3)
      receipt(r, 3, NOWS)
      save(r)
      redis.call('PERSIST', r.rk)
      if r.legacy then redis.call('PERSIST', P .. 'ev:' .. id) end
      redis.call('XADD', ready(ch, r.p), '*', 'id', id)
      redriven = redriven + 1
    end
    drop[#drop + 1] = eid
  end
end
in_runs(drop, function(from, to)
  redis.call('XDEL', P .. 'dead:' .. ch, unpack(drop, from, to))
end)
return {redriven, gone}
