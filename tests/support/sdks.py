"""What running the other Golem SDKs against a devnet takes, shared by the interop tests and
``bench/devnet.py``: the devnet's settings as those SDKs read them, and an offline stand-in for
the image registry and image host they look images up on."""

from __future__ import annotations

import http.server
import json
import os
import shlex

from workgen.devnet import Devnet

HELLO_IMAGE = "d646d7b93083d817846c2ae5c62c72ca0507782385a2e29291a3d376"


class OfflineRegistry(http.server.BaseHTTPRequestHandler):
    """Answers ``/v1/image/info`` (the registry's look-up) with an image on this server, and
    any other path with that image's bytes: the devnet's providers never fetch it (they run the
    host image), the SDKs only check it is there."""

    IMAGE = b"\0" * 1024

    def _body(self) -> bytes:
        if self.path.startswith("/v1/image/info"):
            url = f"http://127.0.0.1:{self.server.server_address[1]}/hello.gvmi"
            return json.dumps({"http": url, "https": url, "sha3": HELLO_IMAGE,
                               "size": len(self.IMAGE)}).encode()
        return self.IMAGE

    def do_HEAD(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self._body())))
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.do_HEAD()
        self.wfile.write(self._body())

    def log_message(self, *args: object) -> None:
        pass


def devnet_env(devnet: Devnet) -> dict[str, str]:
    """This process's environment with the devnet's ``devnet.env`` applied (``$PATH`` too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("YAGNA_", "GSB_"))}
    for line in devnet.env_path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = shlex.split(value)[0].replace("$PATH", env.get("PATH", ""))
    return env
