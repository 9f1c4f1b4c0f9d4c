-- ARGV[4] = at most this many. Moves due scheduled sends and retries to their ready lane.
-- Returns how many were moved.
local lim = tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', NOW, 'LIMIT', 0, lim)
local moved = 0
for _, id in ipairs(ids) do
  redis.call('ZREM', P .. 'delayed', id)
  local f = redis.call('HMGET', P .. 'n:' .. id, 's', 'c', 'p', 'cmp')
  local st = tonumber(f[1])
  if st == 2 or st == 5 then
    local cmp = str(f[4])
    if canceled(cmp) then
      set_status(id, 12)
      emit(id, 12, NOWS)
      retain(id)
    else
      set_status(id, 3)
      redis.call('XADD', P .. 'ready:' .. f[2] .. ':' .. f[3], '*', 'id', id)
      moved = moved + 1
    end
  end
end
return moved
