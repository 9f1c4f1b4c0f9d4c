-- ARGV[4...] = channel names. Returns per channel and lane (HIGH, NORMAL, BULK) how many
-- notifications wait in the lane's ready stream: those not read yet plus those being sent
-- (the group's lag plus its pending count). Acknowledged entries stay in a stream until its
-- head is trimmed (see trim), so its length is that only when Redis cannot tell the lag
-- (the stream once had entries deleted from its middle) or the group is not made yet.
local out = {}
for i = 4, #ARGV do
  for pr = 1, 3 do
    local key = ready(ARGV[i], pr)
    -- Most lanes of a shard are never used: no stream, no error to make.
    local g = redis.call('EXISTS', key) == 1 and group_of(key)
    if g and g.lag then
      out[#out + 1] = g.lag + g.pending
    else
      out[#out + 1] = redis.call('XLEN', key)
    end
  end
end
return out
