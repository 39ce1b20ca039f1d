-- One page of a customer list, atomic: the customers after the cursor in one sort index of each tier
-- asked for, merged in order, filtered by tag, churn level and team; and their views.
--
-- A walk (a first page, then the pages after it by cursor) keeps the order and tiers of its first page:
-- write.lua notes in the walk's ':chg' set each customer whose change moved it across the walk's position
-- (the walk skips it where it is now) and in ':old' its old place when that was still ahead (the walk
-- finds it there). So no customer is listed twice or missed; tag, churn level and team are checked as each
-- page is read. A page examines at most `budget` entries (a page of a rare filter may be short; only an
-- empty next ends the list); a small tag is read from its own index instead.
--
-- ARGV: prefix, walk id, sort index, order, tiers, cursor score ('' first page), cursor id, limit,
-- budget, tag ('' any), churn levels (' low high ' or '' any), team ('' any), now (ms), walk ttl (ms),
-- most walks, tag size read whole.
-- Returns {'ok', next score ('' none), next id, as_of, id, view, id, view, ...} or {'expired'} / {'mismatch'}.
local p, wid, s, o, tiers = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local first = ARGV[6] == ''
local cv, cc = tonumber(ARGV[6]), ARGV[7]
local limit, budget = tonumber(ARGV[8]), tonumber(ARGV[9])
local tag, levels, team = ARGV[10], ARGV[11], ARGV[12]
local now, ttl, maxwalks, small = tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16])
local desc = o == 'desc'
local wz, wkey = p .. ':walks', p .. ':w:' .. wid
local chg, oldz = wkey .. ':chg', wkey .. ':old'
local as_of = now

local function drop(id)
  local key = p .. ':w:' .. id
  redis.call('DEL', key, key .. ':chg', key .. ':old')
  redis.call('ZREM', wz, id)
end

if not first then
  local expires = redis.call('ZSCORE', wz, wid)
  if not expires or tonumber(expires) < now then return {'expired'} end
  local w = redis.call('HMGET', wkey, 's', 'o', 't', 'a')
  if w[1] ~= s or w[2] ~= o or w[3] ~= tiers then return {'mismatch'} end
  as_of = tonumber(w[4])
end

local function fmt(v) return string.format('%.17g', v) end

-- A source: a sorted set read forward from a position, a buffer at a time.
local sources = {}
local function add(key, live)
  sources[#sources + 1] = {key = key, live = live, buf = {}, i = 1, v = cv, c = cc, done = false}
end

local function refill(src)
  local n, buf, got = limit + 1, {}, nil
  if src.v == nil then
    if desc then got = redis.call('ZREVRANGEBYSCORE', src.key, '+inf', '-inf', 'WITHSCORES', 'LIMIT', 0, n)
    else got = redis.call('ZRANGEBYSCORE', src.key, '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, n) end
  else
    local at = fmt(src.v)
    local ties  -- the rest of the customers with the position's own score
    if desc then ties = redis.call('ZREVRANGEBYSCORE', src.key, at, at)
    else ties = redis.call('ZRANGEBYSCORE', src.key, at, at) end
    for _, m in ipairs(ties) do
      if before(src.v, src.c, src.v, m, desc) then buf[#buf + 1] = {m, src.v} end
    end
    if desc then got = redis.call('ZREVRANGEBYSCORE', src.key, '(' .. at, '-inf', 'WITHSCORES', 'LIMIT', 0, n)
    else got = redis.call('ZRANGEBYSCORE', src.key, '(' .. at, '+inf', 'WITHSCORES', 'LIMIT', 0, n) end
  end
  for j = 1, #got, 2 do buf[#buf + 1] = {got[j], tonumber(got[j + 1])} end
  src.done = #got < 2 * n
  src.buf, src.i = buf, 1
  if #buf > 0 then src.v, src.c = buf[#buf][2], buf[#buf][1] end
end

local function head(src)
  if src.i > #src.buf then
    if src.done then return nil end
    refill(src)
    if src.i > #src.buf then return nil end
  end
  return src.buf[src.i]
end

local tagkey = p .. ':tag:' .. tag
if tag ~= '' and redis.call('ZCARD', tagkey) <= small then
  -- a small tag: its holders in the walk's tiers, sorted here, instead of a long scan of the tier indexes
  local buf = {}
  for _, m in ipairs(redis.call('ZRANGE', tagkey, 0, -1)) do
    local tier = redis.call('HGET', p .. ':m:' .. m, 'r')
    if tier and string.find(tiers, tier, 1, true) then
      local v = tonumber(redis.call('ZSCORE', p .. ':ix:' .. s .. ':' .. tier, m) or '0')
      if first or before(cv, cc, v, m, desc) then buf[#buf + 1] = {m, v} end
    end
  end
  table.sort(buf, function(a, b) return before(a[2], a[1], b[2], b[1], desc) end)
  sources[1] = {key = tagkey, live = true, buf = buf, i = 1, done = true}
else
  for k = 1, #tiers do add(p .. ':ix:' .. s .. ':' .. string.sub(tiers, k, k), true) end
end
if not first then add(oldz, false) end

local out, examined, exhausted = {}, 0, false
local lv, lc = cv, cc
local filtered = tag ~= '' or levels ~= '' or team ~= ''
while #out <= limit and examined < budget do
  local best, bh = nil, nil
  for _, src in ipairs(sources) do
    local h = head(src)
    -- a customer both where it was (':old') and where it is now: its old place comes first, so a page
    -- cannot end between the two and the next one start past its old place
    if h and (bh == nil or before(h[2], h[1], bh[2], bh[1], desc)
              or (not src.live and h[1] == bh[1] and h[2] == bh[2])) then best, bh = src, h end
  end
  if best == nil then exhausted = true; break end
  best.i = best.i + 1
  examined = examined + 1
  local cid = bh[1]
  local keep = first or not best.live or redis.call('SISMEMBER', chg, cid) == 0
  if keep and filtered then
    local m = redis.call('HMGET', p .. ':m:' .. cid, 't', 'l', 'm')
    keep = (tag == '' or string.find(' ' .. (m[1] or '') .. ' ', ' ' .. tag .. ' ', 1, true) ~= nil)
      and (levels == '' or string.find(levels, ' ' .. (m[2] or 'none') .. ' ', 1, true) ~= nil)
      and (team == '' or m[3] == team)
  end
  if keep then out[#out + 1] = bh end
  if #out <= limit then lv, lc = bh[2], bh[1] end
end

local reply = {'ok', '', '', as_of}
if #out > limit or not exhausted then
  reply[2], reply[3] = fmt(lv), lc
  if first then
    redis.call('ZREMRANGEBYSCORE', wz, '-inf', now)
    while redis.call('ZCARD', wz) >= maxwalks do  -- the oldest walks give way (their next page: expired)
      drop(redis.call('ZRANGE', wz, 0, 0)[1])
    end
    redis.call('HSET', wkey, 's', s, 'o', o, 't', tiers, 'a', now)
  end
  redis.call('HSET', wkey, 'v', reply[2], 'c', lc)
  redis.call('ZADD', wz, now + ttl, wid)
  redis.call('PEXPIRE', wkey, ttl)
  redis.call('PEXPIRE', chg, ttl)
  redis.call('PEXPIRE', oldz, ttl)
elseif not first then
  drop(wid)  -- the walk is over
end
for j = 1, math.min(#out, limit) do
  local view = redis.call('GET', p .. ':c:' .. out[j][1])
  if view then
    reply[#reply + 1] = out[j][1]
    reply[#reply + 1] = view
  end
end
return reply
