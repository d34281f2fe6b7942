"""The kube facade: the one place that talks to the Kubernetes API.

Everything else in vkprovider reads cluster state through :class:`Informer` caches and writes it through
:class:`Kube` calls, so timeouts, retries, authentication, metrics and watch recovery live here once. Hot paths
move raw JSON dicts (orjson) rather than kubernetes-asyncio's generated models, which are too slow to build for
thousands of objects on a small machine.
"""

from vkprovider.kube.client import ApiConnectionError, ApiError, Kube, PatchKind
from vkprovider.kube.events import EventRecorder
from vkprovider.kube.informer import Informer

__all__ = ["ApiConnectionError", "ApiError", "EventRecorder", "Informer", "Kube", "PatchKind"]
