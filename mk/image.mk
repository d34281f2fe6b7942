# vkprovider's container image (Containerfile at the repo root), built and tested here with podman.
# hack/image/build.sh: a Debian bookworm base made with debootstrap when BASE_IMAGE is not given (no registry
# needed), cached in ~/.cache/vkprovider/images; the image is rebuilt only when its inputs change.
BASE_IMAGE ?=

.PHONY: image image-deps image-test

image-deps: ## podman and debootstrap (Debian packages), installed when missing
	@missing=""; for p in podman debootstrap; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	 [ -z "$$missing" ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }

image: image-deps ## Build localhost/vkprovider:<version> and :latest with podman (no-op when current; BASE_IMAGE=... to choose the base)
	@BASE_IMAGE="$(BASE_IMAGE)" hack/image/build.sh >/dev/null

image-test: setup kcp image ## Test the built image: --version as its non-root user, a base and a module against the local control plane
	$(PY) -m pytest tests/image $(PYTEST_ARGS)
