"""Each output in DIR (*.out.jsonl; INPUT is the file it came from): every id once, each with
the answer to its own body (the server's digest), and how many came from the cache.

    python verify.py DIR a.jsonl b.jsonl    (an output named b*.out.jsonl came from b.jsonl)
"""

import glob
import json
import os
import sys

from server import answer_of

inputs = {os.path.basename(p)[0]: p for p in sys.argv[2:]}
for out in sorted(glob.glob(os.path.join(sys.argv[1], "*.out.jsonl"))):
    name = os.path.basename(out)
    with open(inputs.get(name[0], sys.argv[2])) as f:
        bodies = {row["custom_id"]: row["body"] for row in map(json.loads, f)}
    with open(out) as f:
        lines = [json.loads(line) for line in f]
    ids = [line["custom_id"] for line in lines]
    wrong = sum(not line["response"]["body"]["choices"][0]["message"]["content"]
                .startswith(answer_of(bodies[line["custom_id"]])) for line in lines)
    print(f"{name}: {len(lines)} lines, {len(set(ids))} ids, "
          f"{len(set(bodies) - set(ids))} missing, {wrong} wrong answers, "
          f"{sum(bool(line.get('cached')) for line in lines)} from the cache")
