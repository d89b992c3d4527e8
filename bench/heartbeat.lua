-- wrk script: OpAMP heartbeats (AgentToServer{instance_uid, sequence_num, capabilities}) from a fleet
-- of simulated agents, closed loop over wrk's keep-alive connections.
--
-- Arguments after `--`: AGENTS_FILE MODE THREADS STATE_OUT RESULT_OUT
--   AGENTS_FILE  one agent a line: "<uid hex> <last sequence_num sent> <capabilities>"
--   MODE         "track": the reply must be a ServerToAgent echoing the agent's uid (the gateway);
--                each agent has at most one request in flight and is sent again only once its reply
--                came back, so sequence numbers reach the server in order, as from a real agent.
--                "fixed": the reply is a fixed body (the baseline); agents are used round robin.
--   THREADS      wrk's -t, to split the agents between threads (agent k goes to thread k % THREADS)
--   STATE_OUT    written at the end: "<agent index> <last sequence_num sent> <1 if in flight>"
--   RESULT_OUT   written at the end: JSON with wrk's summary, latency percentiles and reply checks
--
-- Every reply is checked: HTTP 200, and in "track" mode a ServerToAgent whose top-level fields carry
-- no error_response, no ReportFullState flag and a known instance_uid.

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

local mode
local uids = {}        -- local slot -> 16-byte uid
local caps = {}        -- local slot -> capabilities varint bytes
local slot_of = {}     -- uid -> local slot
local queue = {}       -- ring of slots with no request in flight ("track" mode)
local qhead, qtail = 1, 0
local next_slot = 0    -- round robin ("fixed" mode)
local request_head
-- Globals so that done() can read them with thread:get().
agent_ids = {}         -- local slot -> agent index in AGENTS_FILE (0-based)
seqs = {}
inflight = {}
checks = {ok = 0, bad_status = 0, bad_body = 0, error_response = 0, full_state = 0, unknown_uid = 0,
          untracked = 0}

local function hex_to_bytes(hex)
   return (hex:gsub("..", function(pair) return string.char(tonumber(pair, 16)) end))
end

local function varint(n)
   local out = {}
   while n >= 128 do
      out[#out + 1] = string.char(n % 128 + 128)
      n = math.floor(n / 128)
   end
   out[#out + 1] = string.char(n)
   return table.concat(out)
end

-- Reads a varint at position i of s; returns value, next position (nil if truncated).
local function read_varint(s, i)
   local value, scale = 0, 1
   while i <= #s do
      local b = s:byte(i)
      value = value + (b % 128) * scale
      i = i + 1
      if b < 128 then
         return value, i
      end
      scale = scale * 128
   end
   return nil, nil
end

function init(args)
   local agents_file, threads_arg = args[1], tonumber(args[3])
   mode = args[2]
   state_out, result_out = args[4], args[5]
   local index = thread_index or 0
   local k, slot = 0, 0
   for line in io.lines(agents_file) do
      if k % threads_arg == index then
         local hex, seq, cap = line:match("^(%x+) (%d+) (%d+)$")
         slot = slot + 1
         uids[slot] = hex_to_bytes(hex)
         agent_ids[slot] = k
         seqs[slot] = tonumber(seq)
         caps[slot] = varint(tonumber(cap))
         inflight[slot] = 0
         slot_of[uids[slot]] = slot
         qtail = qtail + 1
         queue[qtail] = slot
      end
      k = k + 1
   end
   request_head = "POST " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port ..
      "\r\nContent-Type: application/x-protobuf\r\nContent-Length: "
end

local function pick()
   if mode == "track" then
      if qhead <= qtail then
         local slot = queue[qhead]
         queue[qhead] = nil
         qhead = qhead + 1
         return slot
      end
      -- Every agent is in flight (only after lost replies): fall back, and say so in the result.
      checks.untracked = checks.untracked + 1
   end
   next_slot = next_slot % #uids + 1
   return next_slot
end

function request()
   local slot = pick()
   local seq = seqs[slot] + 1
   seqs[slot] = seq
   if mode == "track" then inflight[slot] = 1 end
   -- field 1 instance_uid (bytes), field 2 sequence_num (varint), field 4 capabilities (varint)
   local body = "\10\16" .. uids[slot] .. "\16" .. varint(seq) .. "\32" .. caps[slot]
   return request_head .. #body .. "\r\n\r\n" .. body
end

-- Scans the top-level fields of a ServerToAgent; returns the uid or nil, and a failed check's name.
local function inspect(body)
   local i, uid = 1, nil
   while i <= #body do
      local tag
      tag, i = read_varint(body, i)
      if not tag then return nil, "bad_body" end
      local field, wire = math.floor(tag / 8), tag % 8
      if wire == 0 then
         local value
         value, i = read_varint(body, i)
         if not value then return nil, "bad_body" end
         if field == 6 and value % 2 == 1 then return uid, "full_state" end
      elseif wire == 2 then
         local len
         len, i = read_varint(body, i)
         if not len or i + len - 1 > #body then return nil, "bad_body" end
         if field == 1 then uid = body:sub(i, i + len - 1) end
         if field == 2 then return uid, "error_response" end
         i = i + len
      else
         return nil, "bad_body"
      end
   end
   return uid, nil
end

function response(status, headers, body)
   if status ~= 200 then
      checks.bad_status = checks.bad_status + 1
      return
   end
   if mode ~= "track" then
      if #body > 0 then checks.ok = checks.ok + 1 else checks.bad_body = checks.bad_body + 1 end
      return
   end
   local uid, failed = inspect(body)
   local slot = uid and slot_of[uid]
   if slot then
      inflight[slot] = 0
      qtail = qtail + 1
      queue[qtail] = slot
   elseif not failed then
      failed = "unknown_uid"
   end
   if failed then
      checks[failed] = checks[failed] + 1
   else
      checks.ok = checks.ok + 1
   end
end

local function json_object(t)
   local parts = {}
   for key, value in pairs(t) do
      local text = type(value) == "table" and json_object(value) or string.format("%.17g", value)
      parts[#parts + 1] = '"' .. key .. '": ' .. text
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

local function write_file(path, text)
   local file = assert(io.open(path, "w"))
   file:write(text)
   file:close()
end

function done(summary, latency, requests)
   local totals = {}
   for key in pairs(checks) do totals[key] = 0 end
   local lines = {}
   for _, thread in ipairs(threads) do
      local t_seqs, t_inflight, t_ids = thread:get("seqs"), thread:get("inflight"), thread:get("agent_ids")
      for key, value in pairs(thread:get("checks")) do totals[key] = totals[key] + value end
      for slot, seq in ipairs(t_seqs) do
         lines[#lines + 1] = string.format("%d %d %d\n", t_ids[slot], seq, t_inflight[slot])
      end
   end
   local percentiles = {}
   for _, p in ipairs({50, 75, 90, 99, 99.9}) do
      percentiles[tostring(p)] = latency:percentile(p)
   end
   local result = {
      requests = summary.requests,
      duration_us = summary.duration,
      bytes = summary.bytes,
      errors = summary.errors,
      latency_us = {min = latency.min, max = latency.max, mean = latency.mean, stdev = latency.stdev,
                    percentiles = percentiles},
      checks = totals,
   }
   write_file(threads[1]:get("state_out"), table.concat(lines))
   write_file(threads[1]:get("result_out"), json_object(result) .. "\n")
end
