#!/bin/bash
# The response cache checked from outside (#25): a non-editable install, a counting server of
# our own, a fresh $BATCHRUN_HOME. BATCHRUN=path/to/batchrun (default: batchrun on PATH);
# the python running server.py needs aiohttp.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
B=${BATCHRUN:-batchrun}; PY=${PYTHON:-python3}
W=$(mktemp -d); cd "$W"
export BATCHRUN_HOME=$W/home OPENAI_API_KEY=sk-first-key-AAAA
PORT=${PORT:-18431}; LOG=$W/server.log; touch "$LOG"
"$PY" "$HERE/server.py" "$PORT" "$LOG" & SP=$!
trap 'kill $SP' EXIT
for _ in $(seq 50); do curl -s "127.0.0.1:$PORT/alive" >/dev/null && break; sleep 0.1; done
"$PY" "$HERE/make_jobs.py" a 0 > a.jsonl; "$PY" "$HERE/make_jobs.py" b 30 > b.jsonl
URL=http://127.0.0.1:$PORT/v1; FAST=(--rpm 100000 --tpm 100000000 -q)
step() { local before; before=$(wc -l < "$LOG"); "$@" > last.out 2> last.err
  echo "exit $? · sent $(( $(wc -l < "$LOG") - before ))"; head -c 400 last.err; }
echo "== estimate a.jsonl";        $B estimate a.jsonl --base-url "$URL" | tail -1
echo "== a.jsonl";                 step $B submit a.jsonl -o a.out.jsonl --base-url "$URL" "${FAST[@]}" --json
"$PY" -c "import json; print('--json cache:', json.load(open('last.out'))['cache'])"
echo "== estimate b.jsonl";        $B estimate b.jsonl --base-url "$URL" | tail -1
echo "== b.jsonl (new ids, 30 edited)"; step $B submit b.jsonl -o b1.out.jsonl --base-url "$URL" "${FAST[@]}"
echo "== b.jsonl --no-cache";      step $B submit b.jsonl -o b2.out.jsonl --base-url "$URL" "${FAST[@]}" --no-cache
echo "== b.jsonl --cache-refresh"; step $B submit b.jsonl -o b3.out.jsonl --base-url "$URL" "${FAST[@]}" --cache-refresh
echo "== a.jsonl, another key";    OPENAI_API_KEY=sk-second-key-BBBB step $B submit a.jsonl -o a2.out.jsonl --base-url "$URL" "${FAST[@]}"
echo "== a.jsonl, another path";   step $B submit a.jsonl -o a3.out.jsonl --base-url "http://127.0.0.1:$PORT/other/v1" "${FAST[@]}"
echo "== a.jsonl, LOCALHOST and /"; step $B submit a.jsonl -o a4.out.jsonl --base-url "http://LOCALHOST:$PORT/v1/" "${FAST[@]}"
"$PY" "$HERE/verify.py" "$W" a.jsonl b.jsonl
echo "== the cache files";         ls -l home/*.sqlite3
echo "prompt words or the key in them: $(cat home/*.sqlite3 | grep -ac -e 'Question number' -e sk-first)"
