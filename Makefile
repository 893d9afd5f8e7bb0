# The two commands a new user needs are `make run` and `make test`;
# README.md explains both.

CARGO ?= cargo
LISTEN ?= tcp://127.0.0.1:3000
# Where `make install` puts the two CLIs (cargo install's layout: $(PREFIX)/bin).
PREFIX ?= $(HOME)/.cargo
# Tests that cannot run here (not root, no vsock, old kernel) list themselves
# in this file; `make test` prints it after the summary.
SKIPPED := $(CURDIR)/target/skipped-tests.txt

.PHONY: run test lint unit bench install

## run: build and start the server locally with dev attestation on 127.0.0.1:3000
run:
	@echo ">> building nautilus-server (release; the first build takes a few minutes)"
	$(CARGO) run --release --bin nautilus-server -- \
		--attestation dev --listen $(LISTEN) --tasks-dir . --dev-root-out out/dev-root.pem

## test: formatting, lints and every test of the workspace (what CI runs)
test: lint unit

lint:
	@echo ">> cargo fmt --check"
	$(CARGO) fmt --all -- --check
	@echo ">> cargo clippy (builds the workspace for lints; the first run takes a few minutes)"
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	@echo ">> cargo test --workspace"
	@mkdir -p $(dir $(SKIPPED)) && rm -f $(SKIPPED)
	NAUTILUS_SKIPPED_TESTS=$(SKIPPED) $(CARGO) test --workspace --locked
	@echo ">> npm test (JavaScript client)"
	cd clients/js && npm test
	@if [ -s $(SKIPPED) ]; then \
		echo ">> $$(wc -l < $(SKIPPED)) test(s) SKIPPED, the rest passed:"; sed 's/^/   /' $(SKIPPED); \
	else \
		echo ">> all tests ran and passed; none skipped"; \
	fi

## install: build and install the nautilus-client and task-runner CLIs into $(PREFIX)/bin
install:
	@echo ">> installing nautilus-client and task-runner into $(PREFIX)/bin"
	$(CARGO) install --locked --root $(PREFIX) --path src/nautilus-client
	$(CARGO) install --locked --root $(PREFIX) --path src/task-runner

## bench: the release server against bare Node.js spawns, side by side (not part of the tests)
bench:
	$(CARGO) build --release --locked --bin nautilus-server --bin nautilus-bench
	target/release/nautilus-bench --server target/release/nautilus-server --json out/bench.json
