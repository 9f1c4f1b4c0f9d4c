-- ARGV[4] = 'n' (one notification, ARGV[5] = id) or 'c' (a campaign, ARGV[5] = campaign id).
-- One notification: canceled if no platform has seen it yet; returns {canceled, status}.
-- A campaign: flags it on this shard (workers and the promoter cancel what they meet) and
-- returns {waiting, 0}: how many of it were waiting here.
local kind, what = ARGV[4], ARGV[5]
if kind == 'n' then
  local r = load(what)
  if not r then return {0, 0} end
  local st = r.s
  if st == 1 or st == 2 or st == 3 or st == 5 then
    redis.call('ZREM', P .. 'delayed', what)
    close(r, 12)
    return {1, 12}
  end
  return {0, st}
end
redis.call('SET', P .. 'cxl:' .. what, NOWS, 'PX', KEEP)
local f = redis.call('HMGET', P .. 'camp:' .. what, 's1', 's2', 's3', 's5')
local waiting = 0
for _, v in ipairs(f) do waiting = waiting + (tonumber(v) or 0) end
return {waiting, 0}
