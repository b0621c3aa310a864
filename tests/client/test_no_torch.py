"""The client works with only grpcio, protobuf and tqdm: heavy and server modules are blocked.

A subprocess installs an import hook refusing torch, transformers, decord, numpy, pydantic and
the server packages, then imports the client, starts the scripted server (from conftest.py) and
runs a whole session with the sync client, the async client and the CLI.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

SCRIPT = textwrap.dedent(
    """
    import asyncio
    import importlib.abc
    import importlib.util
    import io
    import sys

    BLOCKED = ("torch", "transformers", "decord", "numpy", "pydantic",
               "videoqa.worker", "videoqa.service")

    def blocked(name):
        return any(name == b or name.startswith(b + ".") for b in BLOCKED)

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ImportError(f"{name} is blocked in this test")
            return None

    assert not [m for m in sys.modules if blocked(m)]
    sys.meta_path.insert(0, Block())

    import videoqa.client as vqa
    from videoqa.client.cli import SERVER_EXTRA_HINT, main

    spec = importlib.util.spec_from_file_location("scripted_server", sys.argv[1])
    scripted = sys.modules["scripted_server"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scripted)
    running = scripted.start_server()

    with vqa.VideoQAClient(running.target, chunk_size=3) as client:
        session = client.create_session(
            b"some video bytes", question="first?",
            sampling=vqa.FrameSampling(num_frames=4), pruning=vqa.Pruning(budget=0.5),
        )
        assert session.first_answer.text == "Answer to: first?", session.first_answer
        assert session.ask_text("second?").stats.turn == 2
        assert session.append(b"more video").segments == 2
        assert client.server_info().api_version == "v1"
        session.delete()
    assert running.servicer.uploads[0].video == b"some video bytes"
    assert running.servicer.appends[0].video == b"more video"

    async def use_async():
        async with vqa.AsyncVideoQAClient(running.target) as client:
            session = await client.create_session([b"img0", b"img1"], question="q?")
            assert session.first_answer.text == "Answer to: q?"
            assert (await session.append(images=[b"img2"])).segments == 2
            await session.delete()

    asyncio.run(use_async())

    stdout, sys.stdout = sys.stdout, io.StringIO()
    try:
        rc = main(["ask", sys.argv[1], "cli?", "--server", running.target])
        answer = sys.stdout.getvalue()
        assert main(["serve"]) == 2  # videoqa.service is blocked: the server extra is missing
    finally:
        sys.stdout = stdout
    assert rc == 0 and answer == "Answer to: cli?\\n", (rc, answer)

    running.server.stop(0)
    leaked = sorted(m for m in sys.modules if blocked(m))
    assert not leaked, leaked
    print("OK")
    """
)


def test_client_needs_no_heavy_dependencies() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(CONFTEST)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")
    assert "the server needs the server extra" in result.stderr
