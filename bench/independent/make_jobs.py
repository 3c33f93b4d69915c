"""The independent bench's job files: plain chat requests of known size, from a fixed seed.

    tpm  system + user text of 200-600 characters, max_tokens 100-200 (TPM-bound at 600 RPM,
         60K TPM: ~250 tokens a request under the server's ceil(chars / 4) + max_tokens);
    rpm  system + user text of 80-160 characters, max_tokens 20 (RPM-bound at those limits).

    python bench/independent/make_jobs.py tpm 270 jobs.jsonl
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

_TEXT = (
    "the of and to in is that for it as with was on be by this are from at or an have not they "
    "which one you had but all their there can were been has more when will would who what so "
    "about some time into could only other new these two may first then do any like my now over "
    "such our man me even most made after also did many before must through back years where much "
    "your way well down should because each just those people how too little state good very make "
    "world still own see men work long get here between both life being under never day same "
    "another know while last might us great old year off come since against go came right used "
    "take three explain summarize translate describe history science river mountain language "
    "computer network protocol theory economy garden kitchen music painting ocean planet energy "
    "system"
)
WORDS = _TEXT.split()


def text(rng: random.Random, nchars: int) -> str:
    words: list[str] = []
    n = 0
    while n < nchars:
        word = rng.choice(WORDS)
        words.append(word)
        n += len(word) + 1
    return " ".join(words)[:nchars]


def job_lines(kind: str, count: int, seed: int = 0) -> list[str]:
    """`count` JSONL lines of the given kind ("tpm" or "rpm"); the same seed gives the same file."""
    if kind not in ("tpm", "rpm"):
        raise ValueError(f"kind must be tpm or rpm, not {kind!r}")
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        if kind == "tpm":
            system = "You are a concise assistant."
            user = text(rng, rng.randint(200, 600) - len(system))
            max_tokens = rng.randint(100, 200)
        else:
            system = "Be brief."
            user = text(rng, rng.randint(80, 160) - len(system))
            max_tokens = 20
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        lines.append(json.dumps({"id": f"{kind}{i:05d}", "messages": messages,
                                 "max_tokens": max_tokens}))
    return lines


def write_jobs(kind: str, count: int, path: Path, seed: int = 0) -> Path:
    path.write_text("".join(line + "\n" for line in job_lines(kind, count, seed)))
    return path


if __name__ == "__main__":
    write_jobs(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
