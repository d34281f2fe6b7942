"""vkprovider: Koupleless bases as virtual Kubernetes nodes and modules as pods (ModuleController v2 in Python)."""

__version__ = "0.1.0"
