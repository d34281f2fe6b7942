"""The vnodes' kubelet API: what the apiserver calls for ``kubectl logs`` (and refuses for exec) on module pods."""
