"""A real S3-compatible server on 127.0.0.1 for the tests: moto's server (``moto[server]``), started and always stopped."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# What the server is told and the clients read: no credentials or profile of the machine's user leak in.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "featx-test",
    "AWS_SECRET_ACCESS_KEY": "featx-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_STARTUP_SECONDS = 60


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client_environment(endpoint: str, folder: Path) -> dict[str, str]:
    """The environment of a client of the server at *endpoint* (config files in *folder*: none of the user's)."""
    return {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": str(folder / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(folder / "aws-credentials"),
    }


@contextlib.contextmanager
def s3_server(folder: Path, *, authenticate: bool = False) -> Iterator[str]:
    """Run moto's S3 server in *folder* on a free loopback port; yields its endpoint URL.

    With *authenticate*, the server checks credentials (it knows none, so every
    request is refused as coming from an unknown access key).
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDENTIALS)
    if authenticate:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + _STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the S3 test server stopped: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the S3 test server did not answer within {_STARTUP_SECONDS} s") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
