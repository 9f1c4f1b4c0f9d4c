-- ARGV[4] = at most this many. Moves due scheduled sends and retries to their ready lane.
-- Returns how many were moved.
local lim = tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW, 'LIMIT', 0, lim)
local moved = 0
in_runs(ids, function(from, to)
  redis.call('ZREM', P .. 'delayed', unpack(ids, from, to))
end)
for _, id in ipairs(ids) do
  local r = load(id)
  if r and (r.s == 2 or r.s == 5) then
    if canceled(r.cmp) then
      close(r, 12)
    else
      move(r, 3)
      save(r)
      redis.call('XADD', ready(r.c, r.p), '*', 'id', id)
      moved = moved + 1
    end
  end
end
return moved
