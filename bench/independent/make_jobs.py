"""The independent bench's job files: plain chat requests of known size, from a fixed seed.

    tpm  system + user text of 200-600 characters, max_tokens 100-200 (TPM-bound at 600 RPM,
         60K TPM: ~250 tokens a request under the server's ceil(chars / 4) + max_tokens);
    rpm  system + user text of 80-160 characters, max_tokens 20 (RPM-bound at those limits).

    zh   Chinese prose of 300-700 characters, max_tokens 20 (the prompt is most of the charge;
         a characters estimate is about half of tiktoken's count);
    code Python and JSON of 300-900 characters, max_tokens 60-120 (more tokens per character
         than prose under tiktoken).

    big  one request of 120 characters with max_tokens 3000 (a charge of 3,030), then count - 1
         small ones (55 characters, max_tokens 20: 34 tokens each): on a server whose TPM is
         2,000 the first is too large and teaches the limit the rest must run at.

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
_ZH = (
    "我们 今天 研究 人工智能 的 发展 历史 经济 社会 文化 科学 技术 自然 语言 处理 计算机 视觉 "
    "学生 老师 学校 城市 农村 河流 山脉 海洋 天气 季节 春天 夏天 秋天 冬天 音乐 绘画 诗歌 小说 "
    "政府 公司 市场 价格 工作 生活 家庭 朋友 健康 医院 医生 病人 问题 方法 结果 原因 影响 变化 "
    "重要 复杂 简单 快速 缓慢 美丽 古老 现代 传统 认为 发现 解释 描述 总结 翻译 分析 比较 讨论"
)
ZH_WORDS = _ZH.split()
_CODE = [
    'def load(path):\n    with open(path) as f:\n        return [json.loads(x) for x in f]\n',
    '{"id": 4821, "name": "widget-7", "tags": ["red", "large"], "price": 19.99, "stock": 12}',
    "for i in range(10):\n    if i % 3 == 0:\n        total += values[i] * 2\n",
    'SELECT id, name, price FROM items WHERE price > 10 ORDER BY price DESC LIMIT 20;',
    'class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n',
    '{"user": {"id": 17, "email": "a@example.com", "roles": ["admin", "dev"]}, "ok": true}',
]


def text(rng: random.Random, nchars: int) -> str:
    words: list[str] = []
    n = 0
    while n < nchars:
        word = rng.choice(WORDS)
        words.append(word)
        n += len(word) + 1
    return " ".join(words)[:nchars]


def zh_text(rng: random.Random, nchars: int) -> str:
    out = ""
    while len(out) < nchars:
        out += "".join(rng.choice(ZH_WORDS) for _ in range(rng.randint(4, 9)))
        out += rng.choice("，。；")
    return out[:nchars]


def code_text(rng: random.Random, nchars: int) -> str:
    out = ""
    while len(out) < nchars:
        out += rng.choice(_CODE) + "\n"
    return out[:nchars]


def job_lines(kind: str, count: int, seed: int = 0) -> list[str]:
    """`count` JSONL lines of the given kind (see the module docstring); the same seed gives the
    same file."""
    if kind not in ("tpm", "rpm", "zh", "code", "big"):
        raise ValueError(f"kind must be tpm, rpm, zh, code or big, not {kind!r}")
    rng = random.Random(seed)
    lines = []
    for i in range(count):
        if kind == "tpm":
            system = "You are a concise assistant."
            user = text(rng, rng.randint(200, 600) - len(system))
            max_tokens = rng.randint(100, 200)
        elif kind == "zh":
            system = "请简要回答。"
            user = zh_text(rng, rng.randint(300, 700))
            max_tokens = 20
        elif kind == "big":
            system = ""
            user = "x" * 120 if i == 0 else "word " * 11
            max_tokens = 3000 if i == 0 else 20
        elif kind == "code":
            system = "Review this code."
            user = code_text(rng, rng.randint(300, 900))
            max_tokens = rng.randint(60, 120)
        else:
            system = "Be brief."
            user = text(rng, rng.randint(80, 160) - len(system))
            max_tokens = 20
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        lines.append(json.dumps({"id": f"{kind}{i:05d}", "messages": messages,
                                 "max_tokens": max_tokens}))
    return lines


def write_jobs(kind: str, count: int, path: Path, seed: int = 0) -> Path:
    path.write_text("".join(line + "\n" for line in job_lines(kind, count, seed)))
    return path


if __name__ == "__main__":
    write_jobs(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
