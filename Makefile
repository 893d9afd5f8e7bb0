# The two commands a new user needs are `make run` and `make test`;
# README.md explains both.

CARGO ?= cargo
LISTEN ?= tcp://127.0.0.1:3000

.PHONY: run test lint unit bench

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
	cd clients/js && npm test

## bench: the release server against bare Node.js spawns, side by side (not part of the tests)
bench:
	$(CARGO) build --release --locked --bin nautilus-server --bin nautilus-bench
	target/release/nautilus-bench --server target/release/nautilus-server --json out/bench.json
