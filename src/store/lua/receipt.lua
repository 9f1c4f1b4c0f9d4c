-- 7 per item from ARGV[4]: notification id, status, channel, time (ms), provider id,
-- error class, error code. Applies only moves the status machine allows (statuses only move
-- forward), so a repeated or late receipt changes nothing. Returns how many applied.
local applied = 0
local i = 4
while i + 6 <= #ARGV do
  local id, st, at, pid, ec, code = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  local r = load(id)
  if r and may_move(r.s, st) then
    move(r, st)
    receipt(r, st, at, pid, ec, code)
    save(r)
    applied = applied + 1
  end
end
return applied
