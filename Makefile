# The two commands a new user needs are `make run` and `make test`;
# README.md explains both.

CARGO ?= cargo
# What `cargo test` sets for the test it runs (its package's name, version and
# manifest directory) must not reach a cargo build started from here: build
# scripts such as ring's declare `rerun-if-env-changed` on those names, so
# `make image` called from two test binaries (the boot test, the image test)
# recompiled ring and everything above it, the whole release server, each time
# the caller changed. The nested cargo sets its own for every crate it builds.
unexport $(filter CARGO_PKG_% CARGO_MANIFEST_% CARGO_CRATE_NAME CARGO_BIN_NAME CARGO_PRIMARY_PACKAGE CARGO_TARGET_TMPDIR,$(.VARIABLES))
LISTEN ?= tcp://127.0.0.1:3000
# Where `make install` puts the two CLIs (cargo install's layout: $(PREFIX)/bin).
PREFIX ?= $(HOME)/.cargo
# Tests that cannot run here (not root, no vsock, old kernel) list themselves
# in this file; `make test` prints it after the summary.
SKIPPED := $(CURDIR)/target/skipped-tests.txt

.PHONY: logs run need-node task-deps new-task test lint msrv unit repro-test bench profile profile-cpu install mutants help image enclave-binaries build-eif describe eif-crosscheck eif-aws-vector run-enclave run-debug terminate proxy boot-test

# The release binaries `make run` builds once; README's commands, `make install`
# and `make client` reuse them from target/release.
RELEASE_BINS := --bin nautilus-server --bin nautilus-client --bin task-runner

## run: build and start the server locally with dev attestation on 127.0.0.1:3000
run: need-node task-deps
	@echo ">> building nautilus-server, nautilus-client and task-runner (release, into target/release; the first build takes a few minutes)"
	$(CARGO) build --release --locked $(RELEASE_BINS)
	target/release/nautilus-server \
		--attestation dev --listen $(LISTEN) --tasks-dir . --dev-root-out out/dev-root.pem

need-node:
	@command -v node >/dev/null || { echo "make run: node is not installed: install Node.js 18 or later (https://nodejs.org/en/download, or apt-get install nodejs)" >&2; exit 1; }

# Dependencies of every task directory here, from its lockfile, when they are
# missing or older than it (the image installs its own copy with the pinned
# npm; see enclave/README.md). The server refuses a task whose node_modules
# does not match its lockfile, naming this command.
task-deps:
	@for lock in */package-lock.json; do \
		[ -f "$$lock" ] && [ -f "$${lock%/*}/package.json" ] || continue; t=$${lock%/*}; \
		if [ ! -e "$$t/node_modules/.package-lock.json" ] || [ "$$lock" -nt "$$t/node_modules/.package-lock.json" ]; then \
			command -v npm >/dev/null || { echo "make run: $$t has dependencies but npm is not installed: install Node.js with npm" >&2; exit 1; }; \
			echo ">> $$t: npm ci (its dependencies, from its package-lock.json)"; \
			npm ci --prefix $$t --omit=dev --ignore-scripts --no-audit --no-fund || exit 1; fi; done

## new-task: start a task directory NAME (package.json, index.js) from enclave/task-template
TASKS_DIR ?= .
new-task:
	@test -n "$(NAME)" || { echo "make new-task: say which, e.g. make new-task NAME=hello-task" >&2; exit 1; }
	@echo "$(NAME)" | grep -Eqx '[a-z0-9][a-z0-9._-]{0,99}' || { echo "make new-task: NAME=$(NAME) is not a task name: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit" >&2; exit 1; }
	@test ! -e "$(TASKS_DIR)/$(NAME)" || { echo "make new-task: $(TASKS_DIR)/$(NAME) already exists" >&2; exit 1; }
	@mkdir -p "$(TASKS_DIR)/$(NAME)"
	@for f in package.json index.js; do sed 's/TASK_NAME/$(NAME)/g' enclave/task-template/$$f > "$(TASKS_DIR)/$(NAME)/$$f"; done
	@echo "made $(TASKS_DIR)/$(NAME)/ (package.json, index.js). Restart 'make run' to serve it, then:"
	@echo "  curl -X POST http://127.0.0.1:3000/process_data -H 'Content-Type: application/json' -d '{\"payload\": {\"task_path\": \"$(NAME)\", \"args\": [\"a\", \"b\"]}}'"
	@echo "To put it in the image, add the line $(NAME) to enclave/tasks."

## test: formatting, lints, the MSRV check and every test of the workspace (what CI runs)
test: lint msrv unit boot-test repro-test

lint:
	@echo ">> cargo fmt --check"
	$(CARGO) fmt --all -- --check
	@echo ">> cargo clippy (builds the workspace for lints; the first run takes a few minutes)"
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# The oldest Rust the workspace claims (`rust-version` in Cargo.toml, e.g.
# 1.92 -> toolchain 1.92.0): the StageX toolchain of the Containerfile must
# meet it (docs/image.md, "Toolchain"). Its own target directory in the shared
# cache, kept between runs and clones (cargo locks it), so a later run checks
# only the workspace crates again.
# Expanded only where used (the msrv recipe), so no other target needs sed or awk.
MSRV = $(shell sed -n 's/^rust-version = "\([0-9.]*\)"/\1/p' Cargo.toml | awk -F. '{print (NF == 2) ? $$0 ".0" : $$0}')
MSRV_TARGET_DIR ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/nautilus/msrv-target

## msrv: cargo check the workspace with the Rust that Cargo.toml's rust-version names (installs it with rustup when missing)
msrv:
	@test -n "$(MSRV)" || { echo "make msrv: no rust-version in Cargo.toml" >&2; exit 1; }
	@rustup run $(MSRV) rustc --version >/dev/null 2>&1 || { \
		echo ">> installing Rust $(MSRV) (minimal profile) for the MSRV check"; \
		rustup toolchain install $(MSRV) --profile minimal --no-self-update; }
	@echo ">> MSRV check: cargo +$(MSRV) check --locked --workspace"
	CARGO_TARGET_DIR=$(MSRV_TARGET_DIR) rustup run $(MSRV) cargo check --locked --workspace

unit:
	@echo ">> cargo test --workspace"
	@mkdir -p $(dir $(SKIPPED)) && rm -f $(SKIPPED)
	NAUTILUS_SKIPPED_TESTS=$(SKIPPED) $(CARGO) test --workspace --locked
	@echo ">> the task runner's and the server's tests again with the warm pool off"
	NAUTILUS_WARM_POOL=0 NAUTILUS_SKIPPED_TESTS=$(SKIPPED) $(CARGO) test --locked -p task-runner -p nautilus-server
	@echo ">> npm test (JavaScript client; dev dependencies from its lockfile, then Chromium for the browser test)"
	cd clients/js && { [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; } && npm test
	@if [ -s $(SKIPPED) ]; then \
		echo ">> $$(wc -l < $(SKIPPED)) test(s) SKIPPED, the rest passed:"; sed 's/^/   /' $(SKIPPED); \
	else \
		echo ">> all tests ran and passed; none skipped"; \
	fi

## boot-test: build the image, boot it in QEMU and test it through the proxy (installs QEMU, a Debian kernel and vhost-device-vsock when missing)
boot-test:
	@echo ">> boot test: the image in a VM, through the proxy"
	$(CARGO) build --locked --bin nautilus-proxy --bin nautilus-client
	NAUTILUS_SKIPPED_TESTS=$(SKIPPED) $(CARGO) test --locked -p nautilus-proxy --test boot -- --ignored --nocapture

## repro-test: two clones of HEAD, each compiled from scratch with other umask, zone, locale and clock, must build byte-identical images (installs faketime when missing)
repro-test:
	@echo ">> reproducibility test: two clones, two full builds, one compare"
	@command -v faketime >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "make repro-test: installing faketime (moves the second assembly's clock)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q faketime >/dev/null; \
		else echo "make repro-test: faketime is missing: install it (apt-get install faketime)" >&2; exit 1; fi; }
	$(CARGO) test --locked -p enclave-image --test reproducible -- --ignored --nocapture

## proxy: on the parent instance, relay tcp://$(PROXY_LISTEN) to the enclave's vsock port 3000 (ENCLAVE_CID), and its tasks' egress from vsock port 3128 to EGRESS_ALLOW (HOST:PORT,...)
PROXY_LISTEN ?= 0.0.0.0:3000
EGRESS_ALLOW ?=
proxy:
	@test -n "$(ENCLAVE_CID)" || { echo "make proxy: set ENCLAVE_CID to the enclave's CID (nitro-cli describe-enclaves shows it), e.g. make proxy ENCLAVE_CID=16" >&2; exit 1; }
	$(CARGO) run --locked --release --bin nautilus-proxy -- \
		--listen tcp://$(PROXY_LISTEN) --upstream vsock://$(ENCLAVE_CID):3000 \
		$(if $(EGRESS_ALLOW),--egress-listen vsock://3128 --egress-allow $(EGRESS_ALLOW))

## logs: on the parent instance, print the enclave's status and log channel (vsock port 3001 of ENCLAVE_CID; no debug mode needed)
logs:
	@test -n "$(ENCLAVE_CID)" || { echo "make logs: set ENCLAVE_CID to the enclave's CID (nitro-cli describe-enclaves shows it), e.g. make logs ENCLAVE_CID=16" >&2; exit 1; }
	$(CARGO) run --locked --release --bin nautilus-proxy -- logs --upstream vsock://$(ENCLAVE_CID):3001

## install: install the nautilus-client and task-runner CLIs into $(PREFIX)/bin (reuses make run's release build)
install:
	$(CARGO) build --release --locked $(RELEASE_BINS)
	@echo ">> installing nautilus-client and task-runner into $(PREFIX)/bin"
	install -d $(PREFIX)/bin
	install -m 0755 target/release/nautilus-client target/release/task-runner $(PREFIX)/bin/

## bench: the release server against bare Node.js spawns, side by side, twice: the issue 26 targets, the tables, the spread (BENCH_ARGS: e.g. --runs 1 --requests 30; not part of the tests)
BENCH_ARGS ?=
bench:
	$(CARGO) build --release --locked --bin nautilus-server --bin nautilus-bench
	target/release/nautilus-bench --server target/release/nautilus-server --json out/bench.json $(BENCH_ARGS)

## profile: where a cold run's time goes, phase by phase, against bare node under the same tracing (root, strace; POOL=1: a warm run's; not part of the tests)
profile:
	@[ "$$(id -u)" = 0 ] || { echo "make profile: run it as root (it traces the server's boxes, which only root makes)" >&2; exit 1; }
	@command -v strace >/dev/null || { echo "make profile: strace is not installed: apt-get install strace" >&2; exit 1; }
	$(CARGO) build --release --locked --bin nautilus-server
	src/nautilus-bench/profile-cold.sh target/release/nautilus-server

## profile-cpu: where a run's CPU goes, by process and system call, against bare node sampled the same way (root, perf; POOL=1: the warm pool; not part of the tests)
profile-cpu:
	@[ "$$(id -u)" = 0 ] || { echo "make profile-cpu: run it as root (it samples the server's boxes, which only root makes)" >&2; exit 1; }
	@command -v perf >/dev/null || { echo "make profile-cpu: perf is not installed: apt-get install linux-perf" >&2; exit 1; }
	$(CARGO) build --release --locked --bin nautilus-server
	src/nautilus-bench/profile-cpu.sh target/release/nautilus-server

## mutants: mutation testing of the trust crates and the JS client's result
## checks (slow; not part of `make test`). Needs `cargo install --locked
## cargo-mutants`; Stryker comes from .ci/stryker's lockfile. Writes
## out/mutants/summary.txt and fails if a mutant survives that
## .cargo/mutants-accepted.txt does not list.
MUTANTS_OUT ?= out/mutants
# One target directory for the three runs (and the next `make mutants`), so the
# dependencies are built once; each run still builds the workspace in a copy.
MUTANTS_TARGET ?= $(CURDIR)/target/mutants
MUTANTS_JOBS ?= 1
MUTANTS = CARGO_TARGET_DIR=$(MUTANTS_TARGET) $(CARGO) mutants --no-shuffle -j $(MUTANTS_JOBS)
# cargo-mutants exits 2 (missed) or 3 (timeouts) with results; the summary judges those.
MUTANTS_OK = ; s=$$?; [ $$s -eq 0 ] || [ $$s -eq 2 ] || [ $$s -eq 3 ]

mutants:
	@$(CARGO) mutants --version >/dev/null 2>&1 || \
		{ echo "error: cargo-mutants is missing: cargo install --locked cargo-mutants" >&2; exit 2; }
	rm -rf $(MUTANTS_OUT) && mkdir -p $(MUTANTS_OUT)
	$(MUTANTS) -p attestation-verify -o $(MUTANTS_OUT)/attestation-verify $(MUTANTS_OK)
	$(MUTANTS) -p result-signing -o $(MUTANTS_OUT)/result-signing $(MUTANTS_OK)
	$(MUTANTS) -p nautilus-client -f src/nautilus-client/src/result.rs \
		-o $(MUTANTS_OUT)/nautilus-client -- --lib $(MUTANTS_OK)
	@# The JS client's result checks, with Stryker installed beside (not into)
	@# the client, which has no dependencies.
	npm ci --prefix .ci/stryker --no-audit --no-fund --loglevel=error
	rm -rf out/stryker
	cd clients/js && ../../.ci/stryker/node_modules/.bin/stryker run ../../.ci/stryker/stryker.config.json
	mkdir -p $(MUTANTS_OUT)/clients-js && cp out/stryker/mutation.json $(MUTANTS_OUT)/clients-js/
	.ci/mutants-summary $(MUTANTS_OUT) .cargo/mutants-accepted.txt > $(MUTANTS_OUT)/summary.txt; \
		status=$$?; cat $(MUTANTS_OUT)/summary.txt; exit $$status

# ---------------------------------------------------------------- enclave ----
# `make image` needs no container engine; `make build-eif` builds the same way
# inside pinned StageX images. docs/image.md
# explains both.

OUT ?= $(CURDIR)/out
CPU_COUNT ?= 2
# Empty: derived from the EIF and the slot count (one slot per vCPU) by
# enclave/memory.sh, whose rule docs/image.md explains.
MEMORY_MIB ?=
ENCLAVE_CID ?=
ENCLAVE_TARGET := x86_64-unknown-linux-musl
ENCLAVE_TARGET_DIR ?= $(CURDIR)/target/enclave
ENCLAVE_BIN_DIR := $(ENCLAVE_TARGET_DIR)/$(ENCLAVE_TARGET)/release
CARGO_HOME ?= $(HOME)/.cargo
# The build time recorded in the EIF metadata: the commit's time, so two
# clones of one commit agree (PCRs do not depend on it). The binaries record
# none: they are compiled with SOURCE_DATE_EPOCH=0 (only gcc reads it, for
# __DATE__, which ring does not use), because cc-rs declares
# `rerun-if-env-changed` on it and every new commit recompiled ring and the
# release server above it.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
# Paths of this checkout and of cargo's home never reach the binaries.
ENCLAVE_RUSTFLAGS := -C target-feature=+crt-static \
	--remap-path-prefix=$(CURDIR)=/build --remap-path-prefix=$(CARGO_HOME)=/cargo
# A command to run the assembly under: enclave/check-reproducible.sh sets
# `faketime -f +1234d` to move its clock (not the compile's: rustc hangs under
# libfaketime, wolfcw/libfaketime#130).
ASSEMBLE_WRAPPER ?=
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)
# `--output` needs BuildKit: docker's buildx; podman's own build has it.
CONTAINER_BUILD = $(if $(findstring docker,$(notdir $(CONTAINER_ENGINE))),$(CONTAINER_ENGINE) buildx build,$(CONTAINER_ENGINE) build)

## help: list the targets
help:
	@sed -n 's/^## //p' $(MAKEFILE_LIST)

## image: build out/nitro.eif and out/nitro.pcrs without containers (the kernel is the one enclave/inputs.lock pins)
image:
	@$(MAKE) --no-print-directory enclave-binaries
	OUT="$(OUT)" BIN_DIR="$(ENCLAVE_BIN_DIR)" \
		SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(ASSEMBLE_WRAPPER) enclave/build-image.sh

# Static musl binaries of the server, the init and the image tool. The C
# compiler (ring's C and assembly) and the linker (gcc driving binutils' ld)
# are the ones enclave/inputs.lock pins by hash, unpacked by enclave/musl-cc.sh;
# the host's cc and ld are never used for these binaries (build scripts, which
# run on the host, still link with the host's).
enclave-binaries:
	@rustup target list --installed 2>/dev/null | grep -qx $(ENCLAVE_TARGET) || { \
		command -v rustup >/dev/null || { echo "make image: the Rust target $(ENCLAVE_TARGET) is missing and rustup is not installed: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }; \
		rustup target add $(ENCLAVE_TARGET); }
	@cc_dir="$$(enclave/musl-cc.sh)" || exit 1; set -x; \
	SOURCE_DATE_EPOCH=0 CARGO_TARGET_DIR="$(ENCLAVE_TARGET_DIR)" \
		CC_x86_64_unknown_linux_musl="$$cc_dir/cc" AR_x86_64_unknown_linux_musl="$$cc_dir/ar" \
		CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER="$$cc_dir/link-gcc" \
		RUSTFLAGS="$(ENCLAVE_RUSTFLAGS)" \
		$(CARGO) build --release --locked --target $(ENCLAVE_TARGET) \
		-p nautilus-server -p enclave-init -p enclave-image
	@# The pinned ld leaves no name in the binaries: build-image.sh records
	@# this line in the EIF metadata beside the compilers of their .comment.
	@cc_dir="$$(enclave/musl-cc.sh)" && mkdir -p "$(ENCLAVE_BIN_DIR)" && \
		"$$cc_dir/link-gcc" -Wl,--version 2>/dev/null | grep '^GNU ld ' > "$(ENCLAVE_BIN_DIR)/.linker-version.new" && \
		mv -f "$(ENCLAVE_BIN_DIR)/.linker-version.new" "$(ENCLAVE_BIN_DIR)/linker-version"

## build-eif: build out/nitro.eif and out/nitro.pcrs inside StageX images pinned by digest (docker or podman)
build-eif:
	@test -n "$(CONTAINER_ENGINE)" || { echo "make build-eif: neither docker nor podman is installed; use 'make image' to build without containers" >&2; exit 1; }
	@$(CONTAINER_ENGINE) info >/dev/null 2>&1 || { echo "make build-eif: $(CONTAINER_ENGINE) is installed but no engine answers ('$(CONTAINER_ENGINE) info' failed); start it, or use 'make image' to build without containers" >&2; exit 1; }
	@# The build context is the commit (git archive HEAD), never the working
	@# tree: untracked and uncommitted files stay out of the image.
	rm -rf $(OUT)/context && mkdir -p $(OUT)/context
	git archive --format=tar HEAD | tar -xf - -C $(OUT)/context
	$(CONTAINER_BUILD) --file $(OUT)/context/Containerfile --target package --platform linux/amd64 \
		--build-arg SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) \
		--output type=local,dest=$(OUT) $(OUT)/context
	rm -rf $(OUT)/context
	@cat $(OUT)/nitro.pcrs

# One line saying what to do when there is no image yet; before any build.
NEED_EIF = @test -f "$(OUT)/nitro.eif" || { echo "make $@: $(OUT)/nitro.eif does not exist: build it first with 'make image' or 'make build-eif'" >&2; exit 1; }
NEED_NITRO_CLI = @command -v nitro-cli >/dev/null || { echo "make $@: nitro-cli is not installed: this runs on an EC2 parent instance with Nitro Enclaves enabled (install aws-nitro-enclaves-cli); see README.md, Deploy" >&2; exit 1; }

## describe: check out/nitro.eif and print its header, sections and PCRs
# With `make image`'s own static tool when it is there (no second, host
# release build of the tool, e.g. in the image test); else built for the host.
describe:
	$(NEED_EIF)
	@if [ -x "$(ENCLAVE_BIN_DIR)/enclave-image" ]; then \
		"$(ENCLAVE_BIN_DIR)/enclave-image" describe $(OUT)/nitro.eif; \
	else $(CARGO) run -q --release --locked --bin enclave-image -- describe $(OUT)/nitro.eif; fi

## eif-crosscheck: check out/nitro.eif and out/nitro.pcrs with AWS's own image-format crate; fails on any difference (heavy: ~290 crates, so not in make test)
eif-crosscheck:
	$(NEED_EIF)
	rm -rf $(OUT)/sections
	$(CARGO) run -q --release --locked --bin enclave-image -- extract $(OUT)/nitro.eif --out-dir $(OUT)/sections >/dev/null
	CARGO_TARGET_DIR=$(CURDIR)/target/aws-crosscheck $(CARGO) run -q --release --locked \
		--manifest-path src/enclave-image/aws-crosscheck/Cargo.toml -- \
		--expect-pcrs $(OUT)/nitro.pcrs \
		$(OUT)/sections/kernel $(OUT)/sections/cmdline $(OUT)/nitro.eif \
		$(OUT)/sections/ramdisk-0 $(OUT)/sections/ramdisk-1

# The small EIF that `make test` checks against AWS's measurement of it
# (src/enclave-image/tests/aws_vector.rs).
AWS_VECTOR := src/enclave-image/tests/fixtures/aws-vector

## eif-aws-vector: measure the committed test EIF with AWS's image-format crate again and rewrite its aws-measurements.json (heavy, as eif-crosscheck)
eif-aws-vector:
	@test -x "$(ENCLAVE_BIN_DIR)/enclave-image" || $(MAKE) --no-print-directory enclave-binaries
	rm -rf $(OUT)/aws-vector
	$(ENCLAVE_BIN_DIR)/enclave-image extract $(AWS_VECTOR)/small.eif --out-dir $(OUT)/aws-vector >/dev/null
	CARGO_TARGET_DIR=$(CURDIR)/target/aws-crosscheck $(CARGO) run -q --release --locked \
		--manifest-path src/enclave-image/aws-crosscheck/Cargo.toml -- \
		$(OUT)/aws-vector/kernel $(OUT)/aws-vector/cmdline $(AWS_VECTOR)/small.eif \
		$(OUT)/aws-vector/ramdisk-0 $(OUT)/aws-vector/ramdisk-1 > $(OUT)/aws-vector/aws.json
	mv $(OUT)/aws-vector/aws.json $(AWS_VECTOR)/aws-measurements.json
	@cat $(AWS_VECTOR)/aws-measurements.json

# The memory to give the enclave: MEMORY_MIB, else enclave/memory.sh's rule.
ENCLAVE_MEMORY = $(if $(MEMORY_MIB),$(MEMORY_MIB),$$(enclave/memory.sh $(ENCLAVE_BIN_DIR)/enclave-image $(OUT)/nitro.eif $(CPU_COUNT)))

## run-enclave: nitro-cli run-enclave out/nitro.eif (CPU_COUNT, ENCLAVE_CID; MEMORY_MIB defaults to what the EIF and CPU_COUNT slots need)
run-enclave:
	$(NEED_NITRO_CLI)
	$(NEED_EIF)
	@test -x "$(ENCLAVE_BIN_DIR)/enclave-image" || $(MAKE) --no-print-directory enclave-binaries
	nitro-cli run-enclave --eif-path $(OUT)/nitro.eif --cpu-count $(CPU_COUNT) \
		--memory $(ENCLAVE_MEMORY) $(if $(ENCLAVE_CID),--enclave-cid $(ENCLAVE_CID))

## run-debug: as run-enclave, in debug mode with the console attached (PCRs read as zeros)
run-debug:
	$(NEED_NITRO_CLI)
	$(NEED_EIF)
	@test -x "$(ENCLAVE_BIN_DIR)/enclave-image" || $(MAKE) --no-print-directory enclave-binaries
	nitro-cli run-enclave --eif-path $(OUT)/nitro.eif --cpu-count $(CPU_COUNT) \
		--memory $(ENCLAVE_MEMORY) $(if $(ENCLAVE_CID),--enclave-cid $(ENCLAVE_CID)) \
		--debug-mode --attach-console

## terminate: stop every running enclave
terminate:
	$(NEED_NITRO_CLI)
	nitro-cli terminate-enclave --all
