"""300 chat lines: 240 distinct bodies, 60 copies spread through the file (ids PREFIX0..299).
With EDITED=30, 30 distinct lines get " (edited)" (not their copies): 30 bodies never sent.

    python make_jobs.py PREFIX EDITED > jobs.jsonl
"""

import json
import sys

prefix, edited = sys.argv[1], int(sys.argv[2])
for i in range(300):
    j = i if i < 240 else (i - 240) * 4
    text = f"Question number {j}: what is {j} squared?"
    if i < 240 and j % 8 == 0 and j < edited * 8:
        text += " (edited)"
    print(json.dumps({"custom_id": f"{prefix}{i}", "method": "POST",
                      "url": "/v1/chat/completions",
                      "body": {"model": "gpt-4o-mini", "max_tokens": 20,
                               "messages": [{"role": "user", "content": text}]}}))
