"""Controllers wire the kube facade and the tunnels: level-based, a queue of keys and a handler that re-reads."""
