# Benchmarks: the local control plane, the simulator and vkprovider as separate processes (bench/run.py, bench/scenarios/).
# They report (bench/results/<scenario>.json + .png, a table on stdout); they never fail `make test`.
BENCH_ARGS ?=

.PHONY: bench bench-quick bench-micro

bench: setup kcp ## Benchmarks at 1,000 bases x 5 modules (limit, register, density, burst, rollout, steady, churn, replicas; about 25 minutes)
	$(PY) -m bench.run $(BENCH_ARGS)

bench-quick: setup kcp ## The same scenarios at 100 bases, 60 s steady state (about 5 minutes)
	$(PY) -m bench.run --quick $(BENCH_ARGS)

bench-micro: setup kcp ## CPU per request of the hot HTTP paths, vkprovider's and aiohttp's (bench/micro.py; ~3 min)
	$(PY) -m bench.micro
