#!/bin/bash
# kill -9 at random moments (6 times), then resume: every id once with its own answer, and
# what was billed twice (sent - distinct bodies) is at most what was in flight at the kills.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
B=${BATCHRUN:-batchrun}; PY=${PYTHON:-python3}
W=$(mktemp -d); cd "$W"
export BATCHRUN_HOME=$W/home OPENAI_API_KEY=sk-first-key-AAAA
PORT=${PORT:-18433}; LOG=$W/server.log; touch "$LOG"
DELAY=0.4 "$PY" "$HERE/server.py" "$PORT" "$LOG" & SP=$!
trap 'kill $SP' EXIT
for _ in $(seq 50); do curl -s "127.0.0.1:$PORT/alive" >/dev/null && break; sleep 0.1; done
"$PY" "$HERE/make_jobs.py" a 0 > a.jsonl
for round in 1 2 3 4 5 6; do
  if [ "$round" = 1 ]; then
    $B submit a.jsonl -o a.out.jsonl --base-url "http://127.0.0.1:$PORT/v1" --rpm 3000 \
      --tpm 100000000 --concurrency 20 -q >/dev/null 2>>err.log &
  else
    $B resume a.out.jsonl -q >/dev/null 2>>err.log &
  fi
  P=$!; sleep "1.$((RANDOM % 9 + 1))"; kill -9 $P; wait $P 2>/dev/null
  echo "kill $round: $(wc -l < a.out.jsonl) lines written, $(wc -l < "$LOG") requests sent"
done
$B resume a.out.jsonl -q; echo "resume: exit $?"
echo "sent $(wc -l < "$LOG") for $("$PY" -c "import json,sys
print(len({json.dumps(json.loads(l)['body'], sort_keys=True) for l in open(sys.argv[1])}))" "$LOG") distinct bodies (concurrency 20: at most 20 in flight at each kill)"
"$PY" "$HERE/verify.py" "$W" a.jsonl
