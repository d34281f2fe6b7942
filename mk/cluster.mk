# The real local Kubernetes control plane (etcd, kube-apiserver, kube-scheduler, kube-controller-manager)
# built from upstream sources into one cached binary, "kcp". See hack/controlplane/localcluster.py.
K8S_VERSION ?= $(shell cat hack/controlplane/VERSION)
CLUSTER_DIR ?= .local/cluster
CLUSTER_ARGS ?=
LOCALCLUSTER = $(PY) hack/controlplane/localcluster.py

.PHONY: kcp cluster cluster-down cluster-purge cluster-status metrics-server

kcp: ## Build the control-plane binary for K8S_VERSION (cached in ~/.cache/vkprovider; no-op when current)
	@hack/controlplane/build.sh $(K8S_VERSION) >/dev/null

cluster: setup kcp ## Start the local control plane in the background, writes .local/kubeconfig
	@$(LOCALCLUSTER) up --dir $(CLUSTER_DIR) --k8s-version $(K8S_VERSION) $(CLUSTER_ARGS)
	@echo "use it:  export KUBECONFIG=$(CURDIR)/.local/kubeconfig;  kubectl get nodes" \
	     "  (kubectl = $$(hack/controlplane/build.sh $(K8S_VERSION) 2>/dev/null) kubectl)"

cluster-down: ## Stop the local control plane (data kept; nothing left running)
	@$(LOCALCLUSTER) down --dir $(CLUSTER_DIR)

cluster-purge: ## Stop the local control plane and delete its data, certificates and logs
	@$(LOCALCLUSTER) down --dir $(CLUSTER_DIR) --purge

cluster-status: ## Show whether the local control plane is up
	@$(LOCALCLUSTER) status --dir $(CLUSTER_DIR)

metrics-server: ## Build metrics-server (go install from the Go module proxy, cached; make run then starts it: kubectl top node)
	@hack/controlplane/metrics-server.sh >/dev/null
