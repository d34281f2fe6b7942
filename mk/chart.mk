# The Helm chart (charts/vkprovider) and the tools its tests run: helm and kubeconform, installed with
# `go install` from the Go module proxy into ~/.cache/vkprovider/tools (linked from .local/bin).
.PHONY: chart-tools chart-lint chart-test

chart-tools: ## Install helm and kubeconform (go install; cached, no-op when present)
	@hack/chart/tools.sh >/dev/null

chart-lint: chart-tools ## helm lint --strict of the chart, with the default values and with every option set
	.local/bin/helm lint --strict charts/vkprovider
	.local/bin/helm lint --strict charts/vkprovider -f tests/chart/all-options.yaml

chart-test: setup kcp chart-tools ## The chart tests: lint, render, kubeconform, server dry-run and a real helm install on the local control plane
	$(PY) -m pytest tests/chart $(PYTEST_ARGS)
