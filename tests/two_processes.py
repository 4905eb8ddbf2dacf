"""Runs a worker script as two `jax.distributed` processes on loopback."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(script: str, out: pathlib.Path, timeout: float = 540) -> list[dict]:
    """Starts ``script PROCESS_ID PORT OUT`` twice; returns each one's JSON.

    Process i writes its result to ``OUT.i``. Fails with both processes'
    output tails when either exits non-zero.
    """
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(i), str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0].decode()[-3000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    return [json.loads(pathlib.Path(f"{out}.{i}").read_text()) for i in range(2)]
