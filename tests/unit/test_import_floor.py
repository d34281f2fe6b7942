"""What an idle replica loads for good (issue 31, the per-replica floor): heavy libraries stay out of `run`'s
process unless a setting asks for their path. Each case runs in a fresh interpreter, so what this test process
imported does not count; no RSS threshold (it varies with the machine), only which modules are loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Loaded by `vkprovider run` only on a path a setting asks for, or never (sim, tests, bench). yaml: only to read
#: a kubeconfig file (in a cluster the service account needs none).
HEAVY = ("kubernetes_asyncio", "cryptography", "aiomqtt", "paho", "grpc", "vkprovider.sim", "numpy", "yaml")


def _loaded_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter from the repository root; the HEAVY modules it left loaded."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import sys
        heavy = {HEAVY!r}
        print(" ".join(sorted({{m.split(".")[0] if not m.startswith("vkprovider.") else "vkprovider.sim"
                               for m in sys.modules if m.startswith(heavy)}})))
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_run_path_imports_no_heavy_library() -> None:
    """What `vkprovider run` imports with the default settings (HTTP tunnel, kubelet API, in a cluster):
    the command line up to the first check of the start (no kubeconfig here: exit 2), then the listeners' and the
    kube facade's modules it imports next."""
    loaded = _loaded_after("""
        import os
        for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
            os.environ.pop(name, None)
        import vkprovider.cli
        assert vkprovider.cli.main(["run"]) == 2
        import vkprovider.kubelet.server, vkprovider.tunnels.http_tunnel, vkprovider.kube.client
    """)
    assert loaded == []


def test_the_kubelet_api_serves_a_self_signed_certificate_without_loading_cryptography() -> None:
    """No VKP_KUBELET_TLS_CERT: the certificate is made in a child process (cryptography's bindings are 8 MB of
    RSS and its modules 2 MB more, for good, for one certificate at start), and served for the vnode address."""
    loaded = _loaded_after("""
        import asyncio, socket, ssl
        from vkprovider.config import Settings
        from vkprovider.kube.client import ApiError
        from vkprovider.kubelet.server import KubeletApi

        class NoCluster:
            async def get(self, path, **kw):
                raise ApiError(503, "ServiceUnavailable", "no cluster in a unit test")

        async def main():
            api = KubeletApi(Settings(kubelet_host="127.0.0.1", kubelet_port=0), NoCluster(), None, "127.0.0.7")
            await api.start()
            try:
                client = ssl.create_default_context()
                client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
                reader, writer = await asyncio.open_connection("127.0.0.1", api.port, ssl=client)
                der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
                writer.close()
                pem = ssl.DER_cert_to_PEM_cert(der)
                # The served certificate names the vnode address: verify against itself as the CA.
                check = ssl.create_default_context(cadata=pem)
                reader, writer = await asyncio.open_connection("127.0.0.1", api.port, ssl=check,
                                                               server_hostname="127.0.0.7")
                writer.close()
                check = ssl.create_default_context(cadata=pem)
                reader, writer = await asyncio.open_connection("127.0.0.1", api.port, ssl=check,
                                                               server_hostname="localhost")
                writer.close()
            finally:
                await api.stop()

        asyncio.run(main())
    """)
    assert "cryptography" not in loaded
