-- A chunk of customers' writes, atomic: per customer its view, its meta hash (tags, tier, churn level,
-- team), its spend rank, its tag-index memberships, its place in the four sort indexes of its tier, the
-- counts per tier and churn level, and its history. Its tags come as their own argument separated by
-- single spaces (tag names match rules.model.TAG_PATTERN), so the script never decodes the JSON; only
-- the tags lost or gained change their index. An empty view erases the customer: every key and
-- membership of it goes, its history too.
--
-- A list walk under way (list.lua) keeps its order: a customer whose change moves it across the walk's
-- position is noted in the walk's ':chg' set, with its old place in ':old' when that was still ahead.
--
-- ARGV: prefix, now (ms), history cap, then per customer: id, view JSON ('' erase, '-' history only),
-- spend_365d, tags, tier ('_' none), churn level, team, the four index scores (SORTS order), history
-- entries (JSON lines, oldest first), the entry of a rebuilt history (pushed when it has none; '').
local p, now, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local STRIDE = 13
local counts = p .. ':n'

local walks = {}
local found = redis.call('ZRANGEBYSCORE', p .. ':walks', now, '+inf', 'WITHSCORES')
for j = 1, #found, 2 do
  local key = p .. ':w:' .. found[j]
  local w = redis.call('HMGET', key, 's', 'o', 't', 'v', 'c')
  if w[1] and w[4] then
    local si = 1
    for k = 1, #SORTS do if SORTS[k] == w[1] then si = k end end
    walks[#walks + 1] = {key = key, s = w[1], si = si, desc = w[2] == 'desc', tiers = w[3],
                         v = tonumber(w[4]), c = w[5], expires = found[j + 1]}
  end
end

local function history(hkey, entries, rebuilt)
  if rebuilt ~= '' and redis.call('EXISTS', hkey) == 0 then redis.call('LPUSH', hkey, rebuilt) end
  if entries == '' then return end
  for e in string.gmatch(entries, '[^\n]+') do
    -- a replay after a crash evaluates the same changes again: an entry already among the newest is not repeated
    if not redis.call('LPOS', hkey, e, 'MAXLEN', 20) then redis.call('LPUSH', hkey, e) end
  end
  redis.call('LTRIM', hkey, 0, cap - 1)
end

local function ahead(w, tier, score, cid)
  return score ~= nil and string.find(w.tiers, tier, 1, true) ~= nil and before(w.v, w.c, score, cid, w.desc)
end

for i = 4, #ARGV, STRIDE do
  local cid, view, listed, tier, level, team = ARGV[i], ARGV[i + 1], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  local hkey = p .. ':h:' .. cid
  if view == '-' then
    history(hkey, ARGV[i + 11], '')
  else
    local erase = view == ''
    local mkey = p .. ':m:' .. cid
    local old = redis.call('HMGET', mkey, 't', 'r', 'l')
    local otier, olevel, otags = old[2], old[3], {}
    if otier then
      otags = words(old[1] or '')
    else  -- a view written by a version before the meta hash kept its tags in a set
      otags = redis.call('SMEMBERS', p .. ':ct:' .. cid)
      if #otags > 0 then redis.call('DEL', p .. ':ct:' .. cid) end
    end
    local new, tags, kept = {}, {}, {}
    if not erase then
      for _, t in ipairs(words(listed)) do
        if not new[t] then new[t] = true; tags[#tags + 1] = t end
      end
    end
    for _, t in ipairs(otags) do
      if new[t] then kept[t] = true else redis.call('ZREM', p .. ':tag:' .. t, cid) end
    end
    for _, t in ipairs(tags) do
      if not kept[t] then redis.call('ZADD', p .. ':tag:' .. t, 0, cid) end
    end
    local scores = {tonumber(ARGV[i + 7]), tonumber(ARGV[i + 8]), tonumber(ARGV[i + 9]), tonumber(ARGV[i + 10])}
    for _, w in ipairs(walks) do
      local chg, oldz = w.key .. ':chg', w.key .. ':old'
      if erase then
        redis.call('SREM', chg, cid)
        redis.call('ZREM', oldz, cid)
      elseif redis.call('SISMEMBER', chg, cid) == 0 then
        local was = otier and redis.call('ZSCORE', p .. ':ix:' .. w.s .. ':' .. otier, cid)
        was = was and tonumber(was) or nil
        local before_ahead = otier and ahead(w, otier, was, cid) or false
        local now_ahead = ahead(w, tier, scores[w.si], cid)
        if before_ahead ~= now_ahead then
          redis.call('SADD', chg, cid)  -- the walk skips it where it is now
          redis.call('PEXPIREAT', chg, w.expires)
          if before_ahead then  -- and finds it where it was
            redis.call('ZADD', oldz, was, cid)
            redis.call('PEXPIREAT', oldz, w.expires)
          end
        end
      end
    end
    for k = 1, #SORTS do
      if otier and (erase or otier ~= tier) then redis.call('ZREM', p .. ':ix:' .. SORTS[k] .. ':' .. otier, cid) end
      if not erase then redis.call('ZADD', p .. ':ix:' .. SORTS[k] .. ':' .. tier, scores[k], cid) end
    end
    if otier and (erase or otier ~= tier) then redis.call('HINCRBY', counts, 'tier:' .. otier, -1) end
    if olevel and (erase or olevel ~= level) then redis.call('HINCRBY', counts, 'churn:' .. olevel, -1) end
    if erase then
      redis.call('DEL', p .. ':c:' .. cid, mkey, hkey)
      redis.call('ZREM', p .. ':spend365', cid)
    else
      if otier ~= tier then redis.call('HINCRBY', counts, 'tier:' .. tier, 1) end
      if olevel ~= level then redis.call('HINCRBY', counts, 'churn:' .. level, 1) end
      redis.call('SET', p .. ':c:' .. cid, view)
      redis.call('HSET', mkey, 't', table.concat(tags, ' '), 'r', tier, 'l', level, 'm', team)
      local spend = tonumber(ARGV[i + 2])
      if spend > 0 then redis.call('ZADD', p .. ':spend365', spend, cid) else redis.call('ZREM', p .. ':spend365', cid) end
      history(hkey, ARGV[i + 11], ARGV[i + 12])
    end
  end
end
return (#ARGV - 3) / STRIDE
