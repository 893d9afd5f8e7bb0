# The two commands a new user needs are `make run` and `make test`;
# README.md explains both.

CARGO ?= cargo
LISTEN ?= tcp://127.0.0.1:3000

.PHONY: run test lint unit bench proxy

## run: build and start the server locally with dev attestation on 127.0.0.1:3000
run:
	$(CARGO) run --release --bin nautilus-server -- \
		--attestation dev --listen $(LISTEN) --tasks-dir . --dev-root-out out/dev-root.pem

## test: formatting, lints and every test of the workspace (what CI runs)
test: lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked
	node --test src/result-signing/js/

## proxy: on the parent instance, relay tcp://$(PROXY_LISTEN) to the enclave's vsock port 3000 (ENCLAVE_CID)
ENCLAVE_CID ?= 16
PROXY_LISTEN ?= 0.0.0.0:3000
proxy:
	$(CARGO) run --locked --release --bin nautilus-proxy -- \
		--listen tcp://$(PROXY_LISTEN) --upstream vsock://$(ENCLAVE_CID):3000

## bench: latency and throughput of a local dev server (not part of the tests)
bench:
	$(CARGO) run --release --example bench -- 200
