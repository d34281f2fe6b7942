"""The module controller (see ``controller``): pods bound to a vnode become bizs on its base, biz states pod status."""

from vkprovider.controllers.modules.controller import ModuleController

__all__ = ["ModuleController"]
