# The two commands a new user needs are `make run` and `make test`;
# README.md explains both.

CARGO ?= cargo
LISTEN ?= tcp://127.0.0.1:3000

.PHONY: run test lint unit bench proxy boot-test

## run: build and start the server locally with dev attestation on 127.0.0.1:3000
run:
	$(CARGO) run --release --bin nautilus-server -- \
		--attestation dev --listen $(LISTEN) --tasks-dir . --dev-root-out out/dev-root.pem

## test: formatting, lints and every test of the workspace (what CI runs)
test: lint unit boot-test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked
	cd clients/js && npm test

## boot-test: build the image, boot it in QEMU and test it through the proxy (installs QEMU, a Debian kernel and vhost-device-vsock when missing)
boot-test:
	$(CARGO) build --locked --bin nautilus-proxy --bin nautilus-client
	$(CARGO) test --locked -p nautilus-proxy --test boot -- --ignored --nocapture

## proxy: on the parent instance, relay tcp://$(PROXY_LISTEN) to the enclave's vsock port 3000 (ENCLAVE_CID)
ENCLAVE_CID ?=
PROXY_LISTEN ?= 0.0.0.0:3000
proxy:
	@test -n "$(ENCLAVE_CID)" || { echo "make proxy: set ENCLAVE_CID to the enclave's CID (nitro-cli describe-enclaves shows it), e.g. make proxy ENCLAVE_CID=16" >&2; exit 1; }
	$(CARGO) run --locked --release --bin nautilus-proxy -- \
		--listen tcp://$(PROXY_LISTEN) --upstream vsock://$(ENCLAVE_CID):3000

## bench: latency and throughput of a local dev server (not part of the tests)
bench:
	$(CARGO) run --release --example bench -- 200
