# The two commands: `make demo` (the stack up, demo deployed through the gate) and `make test`.
SHELL := /bin/bash
.PHONY: screenshots demo demo-cluster backup restore bench-cluster bench-fleet cd-demo test stop status install figures bench bench-registrator bench-promotion bench-backlog bench-proxy bench-tls bench-delivery bench-analysis bench-scaling bench-dashboard cli-reference mutation

demo:  ## install what is missing, start the stack, deploy demo v1 -> v2 -> broken v3
	@bash scripts/install.sh all
	@bash scripts/stack.sh up
	@bash scripts/demo.sh

demo-cluster:  ## the demo on three hosts and a Consul cluster (network namespaces), its faults, then all of it removed
	@bash scripts/install.sh all
	@bash scripts/demo-cluster.sh

cd-demo:  ## build-and-push this commit, deploy it to prod (a host of its own, dockerd over TLS) through the gate, refuse a broken build
	@bash scripts/install.sh all delivery-tools
	@bash scripts/cd-demo.sh

test:  ## install what is missing and run the whole test suite against real components
	@bash scripts/test.sh

stop:  ## stop everything the stack scripts started (the cluster too, if one is up)
	@bash scripts/stack.sh down
	@if [ -d .cluster ]; then bash scripts/cluster.sh down; fi

status:
	@bash scripts/stack.sh status

backup:  ## save the stack's state to FILE: a Consul snapshot and the token files (make backup FILE=proxystack.backup)
	@test -n "$(FILE)" || { echo "usage: make backup FILE=PATH" >&2; exit 2; }
	@bash scripts/install.sh venv
	@.venv/bin/python -m catalog.backup save "$(FILE)" --consul 127.0.0.1:8500 --tokens .stack/tokens

restore:  ## bring a backup back (on this machine or a fresh one): Consul's state and the tokens, the daemons restarted
	@test -n "$(FILE)" || { echo "usage: make restore FILE=PATH" >&2; exit 2; }
	@bash scripts/install.sh all
	@bash scripts/stack.sh restore "$(FILE)"

install:
	@bash scripts/install.sh all

mutation:  ## mutation testing of the decision modules (mutmut, unit tests); the score beside its goal
	@bash scripts/install.sh venv
	@.venv/bin/pip install -q -e '.[mutation]'
	@mkdir -p .stack/logs && rm -rf mutants
	@.venv/bin/mutmut run >.stack/logs/mutmut.log 2>&1 || { tail -40 .stack/logs/mutmut.log; \
	  echo "mutmut itself failed (a test failing without mutants, or none collected): .stack/logs/mutmut.log"; exit 1; }
	@.venv/bin/python scripts/mutation_score.py --check

cli-reference:  ## rewrite the generated references: commands (docs/reference/cli.md, usage blocks) from --help, labels' rules from the validation
	@bash scripts/install.sh venv
	@.venv/bin/python scripts/cli_reference.py
	@.venv/bin/python scripts/labels_reference.py

screenshots:  ## retake the dashboard's screenshots in docs/images (its browser test, on a stack of its own)
	@bash scripts/install.sh all browser
	@PROXYSTACK_SCREENSHOTS=$(CURDIR)/docs/images .venv/bin/python -m pytest -q tests/e2e/test_progressive.py -k dashboard

figures:  ## re-measure every figure docs/measurements.md shows (all benchmarks, in turn) and rewrite its tables
	@bash scripts/install.sh all bench-tools delivery-tools
	@.venv/bin/python scripts/figures.py --check

bench: ## deploy lead time and failed requests during a switch (needs `make install`)
	@bash scripts/bench.sh

bench-registrator: ## registration latency, resync of 200 containers, stop -> out of traffic
	@bash scripts/install.sh all
	@.venv/bin/python -m bench.registrator_bench

bench-promotion: ## gate pass -> first proxied request, promote -> all traffic
	@bash scripts/install.sh all
	@.venv/bin/python -m bench.promotion_bench

bench-dashboard: ## the dashboard: pages left open and idle (Consul requests, CPU), a change -> the page, pages served
	@bash scripts/install.sh venv consul
	@.venv/bin/python -m bench.dashboard_bench

bench-backlog: ## 10,000 instances imported at once: a new container's test start, a gate change -> nginx
	@bash scripts/install.sh all
	@.venv/bin/python -m bench.backlog_bench

bench-tls: ## HTTPS keep-alive and new-handshake throughput vs a hand-written TLS nginx; certificate change -> served
	@bash scripts/install.sh all bench-tools
	@.venv/bin/python -m bench.tls_bench

bench-proxy: ## reload storms, 100x10 render, idle CPU, nginx overhead, failed requests over 20 deploys
	@bash scripts/install.sh all bench-tools
	@.venv/bin/python -m bench.proxy_bench

bench-proxy-cost: ## where the proxy's CPU per request goes, on a core of its own: the stack's Lua, the Lua balancer, the rest
	@bash scripts/install.sh venv nginx bench-tools
	@.venv/bin/python -m bench.proxy_cost_bench

bench-analysis: ## progressive mode: breach -> weight 0, decision latency per step, errors before a rollback
	@bash scripts/install.sh all
	@.venv/bin/python -m bench.analysis_bench

bench-scaling: ## Swarm: scale-out latency, failed requests over scaling cycles, unhealthy -> replaced, autoscaler reaction
	@bash scripts/install.sh all
	@.venv/bin/python -m bench.scaling_bench

bench-cluster: ## several hosts: Consul leader killed, host killed, registrations/s on 3 hosts, lead time across hosts
	@bash scripts/install.sh all
	@.venv/bin/python -m bench.cluster_bench

bench-fleet: ## 20 Consul agents for 20 hosts, 5,000 instances churned: propagation to every proxy, server CPU, memory, reads
	@bash scripts/install.sh all
	@.venv/bin/python -m bench.fleet_bench --runs 5

bench-delivery: ## build-and-push and deploy over TLS through the gate: time per release, failed requests
	@bash scripts/install.sh all delivery-tools
	@.venv/bin/python -m bench.delivery_bench
