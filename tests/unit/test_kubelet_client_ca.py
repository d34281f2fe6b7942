"""The kubelet API trusts for client certificates only the cluster's client CA (a kubelet's ``--client-ca-file``),
never the CAs the machine trusts: a certificate from a CA in the system store is not a user of the kubelet API.

The real KubeletApi runs without a cluster in a fresh interpreter whose OpenSSL default verify paths
(``SSL_CERT_FILE``, ``SSL_CERT_DIR``) name a rogue CA only, so "the system store" is the rogue CA whatever this
machine trusts. A stand-in for the apiserver answers the client CA ConfigMap with the cluster CA and allows every
SubjectAccessReview, recording who asked: a request is a user exactly when a review names it. The context is the
kubelet API's own (``ssl.SSLContext``, not ``ssl.create_default_context``): nothing in the environment changes it.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
    import asyncio, json, ssl, sys
    from pathlib import Path
    from vkprovider.config import Settings
    from vkprovider.kubelet.server import KubeletApi

    tmp = Path(sys.argv[1])
    reviews = []

    class Apiserver:
        async def get(self, path, **kw):
            assert path.endswith("/configmaps/extension-apiserver-authentication"), path
            return {"data": {"client-ca-file": (tmp / "cluster-ca.crt").read_text()}}

        async def create(self, path, body, **kw):
            assert path.endswith("/subjectaccessreviews"), path
            reviews.append([body["spec"]["user"], body["spec"]["groups"]])
            return {"status": {"allowed": True}}

    class NoVnodes:
        def serves(self, node):
            return False

    async def ask(port, name):
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # not create_default_context: it writes SSLKEYLOGFILE
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        if name:
            client.load_cert_chain(str(tmp / f"{name}.crt"), str(tmp / f"{name}.key"))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            writer.write(b"GET /metrics/resource/vnode-1 HTTP/1.1\\r\\nHost: kubelet\\r\\n"
                         b"Connection: close\\r\\n\\r\\n")
            await writer.drain()
            status = (await reader.readline()).decode().split()
            writer.close()
            return int(status[1]) if len(status) > 1 else "no answer: the server closed the connection"
        except (ssl.SSLError, ConnectionError) as exc:
            return f"no answer: {exc}"

    async def main():
        settings = Settings(kubelet_host="127.0.0.1", kubelet_port=0,
                            kubelet_tls_cert=str(tmp / "serving.crt"), kubelet_tls_key=str(tmp / "serving.key"))
        api = KubeletApi(settings, Apiserver(), NoVnodes(), "127.0.0.1")
        await api.start()
        try:
            answers = {name or "none": await ask(api.port, name) for name in ("cluster-client", "rogue-client", "")}
        finally:
            await api.stop()
        print(json.dumps({"answers": answers, "reviews": reviews}))

    asyncio.run(main())
"""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attributes)


Signer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _issue(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: Signer | None, *, ca: bool = False,
           client: bool = True) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (directory / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Three requests to the kubelet API (a certificate of the cluster CA, one of the rogue CA, none): the answers,
    the SubjectAccessReviews asked, and the directory of the run (its keylog file, if anything wrote one)."""
    tmp = tmp_path_factory.mktemp("kubelet-client-ca")
    cluster_key, rogue_key = _key(), _key()
    cluster_ca = _issue(_name("kubernetes-ca"), cluster_key, None, ca=True)
    rogue_ca = _issue(_name("rogue-ca"), rogue_key, None, ca=True)
    _write(tmp, "cluster-ca", cluster_ca)
    _write(tmp, "rogue-ca", rogue_ca)
    for name, subject, issuer in (("cluster-client", _name("kube-apiserver-kubelet-client", "kubeadm:cluster-admins"),
                                   (cluster_ca, cluster_key)),
                                  ("rogue-client", _name("system:admin", "system:masters"), (rogue_ca, rogue_key))):
        key = _key()
        _write(tmp, name, _issue(subject, key, issuer), key)
    serving_key = _key()
    _write(tmp, "serving", _issue(_name("vkprovider-kubelet"), serving_key, None, client=False), serving_key)
    empty = tmp / "certs"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin", "SSL_CERT_FILE": str(tmp / "rogue-ca.crt"), "SSL_CERT_DIR": str(empty),
           "SSLKEYLOGFILE": str(tmp / "keylog")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(PROBE), str(tmp)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1]), tmp


def test_a_client_certificate_from_a_ca_the_system_trusts_is_not_a_user(served: tuple[dict[str, Any], Path]) -> None:
    seen, _ = served
    answers, reviews = seen["answers"], seen["reviews"]
    # The cluster CA's certificate is the user it names (authorized, then 404: this replica serves no vnode).
    assert answers["cluster-client"] == 404, seen
    assert ["kube-apiserver-kubelet-client", ["kubeadm:cluster-admins"]] in reviews
    # No certificate: CERT_OPTIONAL lets the handshake through for a bearer token; without one, 401.
    assert answers["none"] == 401, seen
    # The rogue CA's certificate never becomes a user: the TLS handshake refuses it (unknown CA), no HTTP answer,
    # and no review names it.
    assert str(answers["rogue-client"]).startswith("no answer"), seen
    assert all(user != "system:admin" for user, _ in reviews), seen


def test_the_kubelet_api_writes_no_tls_secrets_where_sslkeylogfile_says(served: tuple[dict[str, Any], Path]) -> None:
    """ssl.create_default_context honours SSLKEYLOGFILE: an environment variable would make the kubelet API write
    the session secrets of the apiserver's connections (logs, bearer tokens) to a file. A kubelet has no such switch."""
    _, tmp = served
    keylog = tmp / "keylog"  # aiohttp's module-level client contexts open it (Python writes a comment header)
    secrets = [line for line in keylog.read_text().splitlines() if not line.startswith("#")] if keylog.exists() else []
    assert secrets == []
