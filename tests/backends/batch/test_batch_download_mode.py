"""Downloaded result files hold every answer of a batch: they are the user's alone (0600), as
the job's output and part files are, whatever the umask (issue 21 item 8)."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

from aiohttp import web

from batchrun.backends.batch.api import BatchClient
from batchrun.http.endpoint import Endpoint
from tests.helpers.batch_harness import HostileBatches, ok_line
from tests.helpers.cli import FAKE_KEY


def test_a_downloaded_output_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    def content(lines: list[dict[str, Any]]) -> web.Response:
        return web.Response(body=ok_line("r1"))

    async def download(base_url: str, dest: Path) -> None:
        async with BatchClient(Endpoint.make(base_url, None, None), FAKE_KEY, 10) as api:
            await api.download("file-out", dest)

    dest = tmp_path / "part-00001.output.jsonl"
    before = os.umask(0o022)
    try:
        with HostileBatches(content) as server:
            asyncio.run(download(server.base_url, dest))
    finally:
        os.umask(before)
    assert dest.read_bytes() == ok_line("r1")
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
