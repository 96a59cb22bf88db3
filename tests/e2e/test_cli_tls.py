"""`eg` against an https control plane with a self-signed CA (`entryguard up --tls-self-signed`)."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ControlPlane, make_control_plane
from tests.e2e.test_cli_flow import Eg, assert_one_line_error, login


@pytest.fixture(scope="module")
def tls_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlane, Path]]:
    cp = make_control_plane(tmp_path_factory.mktemp("cptls"), None)
    cp.args.append("--tls-self-signed")
    cp.url = cp.url.replace("http://", "https://")
    ca = cp.data_dir / "tls" / "ca.pem"
    assert cp.log_path is not None
    with open(cp.log_path, "ab") as log:
        cp.proc = subprocess.Popen(
            cp.args, env=cp.env, stdout=log, stderr=subprocess.STDOUT, cwd=cp.data_dir.parent
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert cp.proc.poll() is None, cp.log()
            assert time.monotonic() < deadline, f"https control plane did not start: {cp.log()}"
            try:
                if (
                    ca.exists()
                    and httpx.get(
                        f"{cp.url}/api/v1/health",
                        verify=ssl.create_default_context(cafile=str(ca)),
                        timeout=1,
                    ).status_code
                    == 200
                ):
                    break
            except (httpx.HTTPError, ssl.SSLError):
                pass
            time.sleep(0.1)
        yield cp, ca
    finally:
        cp.stop()


def test_https_with_a_self_signed_ca(tls_plane: tuple[ControlPlane, Path], tmp_path: Path) -> None:
    cp, ca = tls_plane
    eg = Eg(tmp_path)
    r = eg(
        "login",
        "--server",
        cp.url,
        "--email",
        cp.admin_email,
        "--password-stdin",
        stdin=cp.admin_password,
    )
    assert_one_line_error(r, 1, "cannot verify the TLS certificate", "--ca-file")
    r = eg(
        "login",
        "--server",
        cp.url,
        "--ca-file",
        str(tmp_path / "missing.pem"),
        "--email",
        cp.admin_email,
        "--password-stdin",
        stdin=cp.admin_password,
    )
    assert_one_line_error(r, 2, "missing.pem not found")  # a usage error
    login(eg, cp.url, cp.admin_email, cp.admin_password, "--ca-file", str(ca))
    stored = json.loads((eg.config_dir / "credentials.json").read_text())
    assert stored["ca_file"] == str(ca)
    # Later commands trust the CA given at login.
    assert eg.json("whoami")["user"]["email"] == cp.admin_email
    token = stored["token"]
    bare = Eg(tmp_path / "bare")
    who = bare.json("whoami", EG_SERVER=cp.url, EG_TOKEN=token, EG_CA_FILE=str(ca))
    assert who["credential"] == "login"
    plain = cp.url.replace("https://", "http://")
    assert_one_line_error(bare("whoami", EG_SERVER=plain, EG_TOKEN=token), 1, plain)
