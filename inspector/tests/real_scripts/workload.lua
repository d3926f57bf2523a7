local function producer(n)
  return coroutine.wrap(function()
    for i = 1, 40000 do coroutine.yield(string.format("k%05d", (i * 7919 + n) % 30011)) end
  end)
end
local counts, total = {}, 0
for n = 1, 4 do
  for k in producer(n) do counts[k] = (counts[k] or 0) + 1; total = total + 1 end
end
local keys = {}
for k in pairs(counts) do keys[#keys + 1] = k end
table.sort(keys)
print(#keys, total, keys[1], keys[#keys])
local parts = {}
for i = 1, 200000 do parts[#parts + 1] = string.rep(string.char(97 + i % 26), i % 7) end
local s = table.concat(parts)
print(#s, s:sub(1, 30))
local before = collectgarbage("count")
local cyc = {}
for i = 1, 100000 do local a, b = {}, {}; a.p, b.p = b, a; cyc[i % 100] = a end
collectgarbage("collect")
print("collected", collectgarbage("count") < before + 10000)
local sum = 0
for i = 1, 300000 do sum = (sum * 31 + i) % 1000000007 end
print(sum, string.format("%.6f", math.pi * 1e3), ("x"):rep(3))
local t = {}
for i = 1, 100000 do t[i] = (i * 2654435761) % 1000003 end
table.sort(t)
print(t[1], t[50000], t[100000])
