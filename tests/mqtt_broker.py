"""A real MQTT broker for tests: Debian's mosquitto on free loopback ports, as a pytest plugin.

Register it with ``pytest_plugins = ["tests.mqtt_broker"]``; tests then ask for the session fixture
``mqtt_broker``. The broker gets a generated configuration: a plain listener and a TLS listener (a CA and a
server certificate for 127.0.0.1/localhost made here with ``cryptography``), both requiring a user name and
password from a ``mosquitto_passwd`` file. ``restart()`` stops it and starts it again on the same ports (the
broker-restart test). mosquitto is installed with apt-get when missing; when it cannot start, the fixture fails
loudly: an MQTT test must never be skipped silently.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.ports import free_port

START_TIMEOUT_S = 15.0


def _find(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()), None
    )


def ensure_mosquitto() -> tuple[str, str]:
    """Paths of ``mosquitto`` and ``mosquitto_passwd``, installing the Debian package when they are missing."""
    broker, passwd = _find("mosquitto"), _find("mosquitto_passwd")
    if broker and passwd:
        return broker, passwd
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "mosquitto"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.fail(f"cannot install mosquitto ({' '.join(command)}): {done.stderr[-2000:]}")
    broker, passwd = _find("mosquitto"), _find("mosquitto_passwd")
    if not broker or not passwd:
        pytest.fail("mosquitto installed but its binaries are not found")
    return broker, passwd


# --- certificates ----------------------------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def make_ca(directory: Path, name: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA; returns its certificate path, key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


def make_server_cert(directory: Path, ca_key: ec.EllipticCurvePrivateKey,
                     ca_cert: x509.Certificate) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by the CA; returns (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


# --- the broker ------------------------------------------------------------------------------------------------


@dataclass
class MqttBroker:
    """A mosquitto process. ``ca_path`` verifies the TLS listener; ``other_ca_path`` is an unrelated CA."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = 0
    tls_port: int = 0
    username: str = "vkp"
    password: str = "s3cret-for-tests"
    ca_path: Path = field(default=Path())
    other_ca_path: Path = field(default=Path())
    _binary: str = ""
    _proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, directory: Path) -> MqttBroker:
        binary, passwd = ensure_mosquitto()
        broker = cls(directory=directory, port=free_port(), tls_port=free_port(), _binary=binary)
        broker.ca_path, ca_key, ca_cert = make_ca(directory, "test-ca")
        broker.other_ca_path, _, _ = make_ca(directory, "other-ca")
        cert_path, key_path = make_server_cert(directory, ca_key, ca_cert)
        password_file = directory / "passwords"
        password_file.touch(mode=0o600)
        done = subprocess.run([passwd, "-b", str(password_file), broker.username, broker.password],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            pytest.fail(f"mosquitto_passwd failed: {done.stdout} {done.stderr}")
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {password_file}",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"listener {broker.port} {broker.host}",
            f"listener {broker.tls_port} {broker.host}",
            f"cafile {broker.ca_path}",
            f"certfile {cert_path}",
            f"keyfile {key_path}",
        ]
        if os.geteuid() == 0:
            lines.insert(0, f"user {getpass.getuser()}")  # do not drop to "mosquitto": it could not read our files
        (directory / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        return broker

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start mosquitto and wait until both listeners accept connections; fail loudly otherwise."""
        if self.running:
            return
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen([self._binary, "-c", str(self.directory / "mosquitto.conf")],
                                          stdout=log, stderr=log, process_group=0)
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = {self.port, self.tls_port}
        while pending and time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            for port in list(pending):
                with contextlib.suppress(OSError), socket.create_connection((self.host, port), timeout=0.5):
                    pending.discard(port)
            if pending:
                time.sleep(0.05)
        if pending:
            self.stop()
            pytest.fail(f"mosquitto did not start on {self.host}:{sorted(pending)}: "
                        f"{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same ports (every client connection drops, subscriptions are lost)."""
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttBroker]:
    """A running mosquitto for the whole test session (plain and TLS listeners, password auth)."""
    broker = MqttBroker.create(tmp_path_factory.mktemp("mqtt-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
