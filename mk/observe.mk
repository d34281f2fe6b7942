# Observability: the alert rules (charts/vkprovider/files/alerts.yaml), the Grafana dashboard
# (charts/vkprovider/files/dashboard.json) and docs/operations.md, tested by tests/operations (promtool checks and
# unit tests, a real Prometheus scraping a real vkprovider on the local control plane). Debian's prometheus
# package brings prometheus and promtool. The tests start their own servers; the package's own service would
# listen on :9090, vkprovider's default metrics port (make run), so where systemd runs it is disabled right after
# the install (without systemd it never starts).
.PHONY: observe-deps observe-test alerts-check

observe-deps: ## prometheus and promtool (Debian's prometheus package), installed when missing
	@{ command -v prometheus && command -v promtool; } >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	  && { [ ! -d /run/systemd/system ] || systemctl disable --now prometheus >/dev/null 2>&1 || true; }; }

test-deps: observe-deps

alerts-check: observe-deps ## promtool check rules + promtool test rules of the chart's alert rules
	promtool check rules charts/vkprovider/files/alerts.yaml
	promtool test rules tests/operations/alerts_test.yaml

observe-test: setup kcp observe-deps chart-tools ## The operations tests: alert rules, dashboard, docs/operations.md, a real Prometheus
	$(PY) -m pytest tests/operations $(PYTEST_ARGS)
