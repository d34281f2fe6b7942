# Real Koupleless base + biz jars for the e2e tests (JDK 17, Maven 3.8+, Maven Central only). See docs/protocol.md.
JAVA_E2E_DIR ?= tests/e2e/java
JAVA_JARS_DIR ?= $(JAVA_E2E_DIR)/target-jars

.PHONY: java-build java-clean e2e-java

java-build: ## Build the Koupleless base and biz jars into tests/e2e/java/target-jars (idempotent; FORCE=1 rebuilds)
	hack/java/build.sh

e2e-java: setup kcp java-build ## Run the real-base end-to-end tests alone
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

java-clean: ## Remove the built e2e jars and Maven target dirs (the Maven cache in ~/.cache/vkprovider/m2 is kept)
	rm -rf $(JAVA_JARS_DIR) $(JAVA_E2E_DIR)/*/target
