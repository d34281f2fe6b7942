"""The kubelet API's self-signed serving certificate (when VKP_KUBELET_TLS_CERT is not set), made in a child process.

Why a child process: cryptography's Rust bindings are 8 MB of RSS once loaded and its modules 2 MB more, and a
process never gives a loaded library back; every replica would pay 10 MB for good (an eighth of an idle replica)
to sign one certificate at start (issue 31, docs/performance.md "Measured reasons in the code"). ``make`` runs as
this file, ``python -P selfsigned.py ADDRESS DIRECTORY``: it imports nothing of vkprovider, so the child loads the
standard library and cryptography only (about a quarter of a second); ``self_signed`` in ``kubelet.server`` runs it
and waits. The certificate is the same as when it was made in the process: an EC P-256 key, CN
``vkprovider-kubelet``, SANs ``localhost`` and the address when it is an IP, valid from five minutes ago for a year.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import sys
from pathlib import Path

CERT_FILE = "kubelet.crt"
KEY_FILE = "kubelet.key"


def make(address: str, directory: Path) -> tuple[Path, Path]:
    """Write a serving certificate for ``address`` and its key (mode 0600) into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vkprovider-kubelet")])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    with contextlib.suppress(ValueError):
        sans.append(x509.IPAddress(ipaddress.ip_address(address)))
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365)).add_extension(x509.SubjectAlternativeName(sans), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


if __name__ == "__main__":
    make(sys.argv[1], Path(sys.argv[2]))
