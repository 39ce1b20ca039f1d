-- Shared by write.lua and list.lua (stream/view/redis_view.py puts it in front of each).

local function words(text)
  local out = {}
  for w in string.gmatch(text, '%S+') do out[#out + 1] = w end
  return out
end

-- Whether (av, am) comes before (bv, bm) in a list's order: by score, then by customer id in byte
-- order (Redis' order of equal scores; Lua's < on strings follows the locale). Equal scores are rare:
-- the scores carry a hash of the id (stream/view/listing.py).
local function before(av, am, bv, bm, desc)
  if av ~= bv then
    if desc then return av > bv end
    return av < bv
  end
  for i = 1, math.min(#am, #bm) do
    local x, y = string.byte(am, i), string.byte(bm, i)
    if x ~= y then
      if desc then return x > y end
      return x < y
    end
  end
  if desc then return #am > #bm end
  return #am < #bm
end

local SORTS = {'last', 'risk', 'score', 'spend'}  -- stream/view/listing.py INDEXES
