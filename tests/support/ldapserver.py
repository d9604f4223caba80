"""A real slapd (Debian package slapd) on loopback, with a throwaway config and a CA.

Started once per test session (a few hundred milliseconds): slapadd loads the tree, then
slapd serves LDAPS on one port and LDAP with StartTLS on another. The service account can
read everything but userPassword (as in a careful real setup), so a backend that tried to
read hashes would find none.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.directory_data import AD_SCHEMA, BASE_DN, SERVICE_DN, ldif

SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
MODULES = Path("/usr/lib/ldap")
SCHEMAS = Path("/etc/ldap/schema")
START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> str | None:
    """Why slapd cannot run here, or None."""
    for path in (SLAPD, SLAPADD, MODULES / "back_mdb.la", SCHEMAS / "inetorgperson.schema"):
        if not Path(path).exists():
            return f"{path} missing (Debian package slapd; scripts/check.sh installs it)"
    return None


@dataclass
class Slapd:
    root: Path
    ca: trustme.CA
    ldaps_port: int
    ldap_port: int
    proc: subprocess.Popen[bytes]

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    @property
    def starttls_uri(self) -> str:
        return f"ldap://127.0.0.1:{self.ldap_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_slapd(*, require_tls: bool = True, extra_ldif: str = "") -> Slapd:
    """require_tls False lets plain LDAP in (only for a TLS-terminating proxy in bench/);
    extra_ldif adds entries (bench accounts)."""
    root = Path(tempfile.mkdtemp(prefix="mailkeep-slapd-"))
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    leaf.cert_chain_pems[0].write_to_path(str(root / "server.pem"))
    leaf.private_key_pem.write_to_path(str(root / "server.key"))
    (root / "db").mkdir()
    (root / "ad.schema").write_text(AD_SCHEMA)
    conf = "\n".join([
        *[f"include {SCHEMAS / s}.schema" for s in ("core", "cosine", "inetorgperson",
                                                     "nis")],
        f"include {root}/ad.schema",
        f"modulepath {MODULES}", "moduleload back_mdb",
        f"pidfile {root}/slapd.pid",
        f"TLSCACertificateFile {root}/ca.pem",
        f"TLSCertificateFile {root}/server.pem",
        f"TLSCertificateKeyFile {root}/server.key",
        # Reading only once TLS is on, like the directories mailkeep is pointed at.
        "security ssf=1 update_ssf=1 simple_bind=1" if require_tls else "",
        "database mdb", f'suffix "{BASE_DN}"', f'rootdn "cn=admin,{BASE_DN}"',
        "rootpw admin-pw-unused", f"directory {root}/db", "maxsize 33554432",
        "access to attrs=userPassword by anonymous auth by self read by * none",
        f'access to * by dn.exact="{SERVICE_DN}" read by self read by * none',
        "",
    ])
    (root / "slapd.conf").write_text(conf)
    (root / "data.ldif").write_text(ldif() + "\n" + extra_ldif)
    subprocess.run([SLAPADD, "-f", str(root / "slapd.conf"), "-l", str(root / "data.ldif")],
                   check=True, capture_output=True, timeout=30)
    ldaps_port, ldap_port = free_port(), free_port()
    log = open(root / "slapd.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [SLAPD, "-f", str(root / "slapd.conf"), "-d", "0",
         "-h", f"ldaps://127.0.0.1:{ldaps_port}/ ldap://127.0.0.1:{ldap_port}/"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LC_ALL": "C"})
    log.close()
    server = Slapd(root, ca, ldaps_port, ldap_port, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            text = (root / "slapd.log").read_text(errors="replace")
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"slapd exited: {text[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", ldap_port), timeout=1).close()
            socket.create_connection(("127.0.0.1", ldaps_port), timeout=1).close()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("slapd did not start listening") from None
            time.sleep(0.05)
