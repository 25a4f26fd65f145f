# Thin wrapper over CMake (as Neovim does): `make demo` and `make test` are the README's two
# commands; each installs what is missing, builds, then runs.
BUILD      ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=
# Warnings are errors in the builds these targets make (plain cmake builds leave them warnings).
WERROR     ?= ON
# What `make test` leaves to CI: the .deb and Ansible checks, and the Soft-RoCE VM.
TEST_EXCLUDE ?= packaging|vm
# Packages get their own build dir: installed to /usr (Debian's multiarch libdir, /etc), no tests.
PKG_BUILD  ?= build-deb

.PHONY: all deps build demo test test-quick asan fuzz fuzz-run tsan check-format clean install \
	package check-package check-ansible help

all: build

help:
	@echo "make demo    install dependencies, build, run the local demo"
	@echo "make test    install dependencies, build, run the whole test suite (all but the"
	@echo "             packaging and vm labels, which CI runs), then list what was skipped"
	@echo "make test-quick  build, run the unit label only (in-process tests, seconds)"
	@echo "make build   configure and build into $(BUILD)/"
	@echo "make asan    build into build-asan/ with ASan+UBSan and run the tests there"
	@echo "make fuzz    build the libFuzzer harnesses (tests/fuzz/, clang) into build-fuzz/fuzz/"
	@echo "make fuzz-run  build them, replay the regression inputs, fuzz each for FUZZ_SECONDS"
	@echo "             (default 60), 2 at a time; fails on any finding (scripts/run-fuzzers)"
	@echo "make tsan    build into build-tsan/ with ThreadSanitizer and run the threaded suites"
	@echo "make deps    install the Debian packages needed (scripts/install-deps)"
	@echo "make package build the kvnode and kvnode-dev .deb in $(PKG_BUILD)/ (cpack -G DEB)"
	@echo "make check-package  build the .debs and check them without installing (lintian too)"
	@echo "make check-ansible  lint the Ansible roles and roll them out to this machine (root;"
	@echo "                    installs the fresh .deb, runs a scheduler and a node, purges it)"
	@echo "make clean   remove build directories"

deps:
	@scripts/install-deps

# Configured every time (a second or so): an existing build directory gets this Makefile's
# settings too.
build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DKVN_WERROR=$(WERROR) $(CMAKE_ARGS)
	cmake --build $(BUILD) -j$(JOBS)

# ctest, then the list of skipped tests with their reasons; the exit status is ctest's.
CTEST = rm -f $(1)/test-results/*.tap $(1)/test-results/*.skip; \
	ctest --test-dir $(1) --output-on-failure $(2); rc=$$?; scripts/test-summary $(1); exit $$rc

demo: deps
	@$(MAKE) --no-print-directory build
	$(BUILD)/kvnode demo

test: deps
	@$(MAKE) --no-print-directory build
	@$(call CTEST,$(BUILD),-LE '$(TEST_EXCLUDE)')

test-quick:
	@$(MAKE) --no-print-directory build
	@$(call CTEST,$(BUILD),-L unit)

asan: deps
	@$(MAKE) --no-print-directory build BUILD=build-asan BUILD_TYPE=Debug \
		CMAKE_ARGS="-DKVN_SANITIZE=ON $(CMAKE_ARGS)"
	@export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0; \
		$(call CTEST,build-asan,-LE '$(TEST_EXCLUDE)')

# The fuzzers: clang's libFuzzer with ASan and UBSan over the whole library (tests/fuzz/).
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
fuzz:
	CC=clang cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
		-DCMAKE_C_FLAGS=-O1 -DKVN_FUZZ=ON -DKVN_BUILD_TESTS=OFF -DKVN_BUILD_EXAMPLES=OFF \
		-DKVN_WERROR=$(WERROR) $(CMAKE_ARGS)
	cmake --build $(FUZZ_BUILD) -j$(JOBS) --target fuzzers

fuzz-run: fuzz
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/run-fuzzers $(FUZZ_BUILD)

# ThreadSanitizer over the suites that run threads: in the test process (the servers, the engine's
# writers, the transport's progress thread, the plugin launcher) and in the kvnode processes the
# cluster suites start. Every process writes its reports under build-tsan/tsan-reports/ (a
# child's stderr goes to a file the test removes); any report fails the target.
# gcc: its ThreadSanitizer runtime is a shared library, which the test modules (linked with
# --no-undefined) need; clang links the runtime into executables only.
TSAN_CC ?= gcc
TSAN_TESTS ?= storage|cpu|pool|tcp|transport_conformance|rails|cluster|scheduler|lm|server|client|plugins|reload
TSAN_REPORTS = $(CURDIR)/build-tsan/tsan-reports
tsan:
	@$(MAKE) --no-print-directory build BUILD=build-tsan BUILD_TYPE=Debug \
		CMAKE_ARGS="-DCMAKE_C_COMPILER=$(TSAN_CC) -DKVN_TSAN=ON $(CMAKE_ARGS)"
	@rm -rf $(TSAN_REPORTS) build-tsan/test-results/*.tap build-tsan/test-results/*.skip; \
	mkdir -p $(TSAN_REPORTS); \
	export TSAN_OPTIONS="log_path=$(TSAN_REPORTS)/report second_deadlock_stack=1 \
		suppressions=$(CURDIR)/tests/tsan/suppressions.txt $(TSAN_OPTIONS)"; \
	ctest --test-dir build-tsan --output-on-failure -R '^test_($(TSAN_TESTS))$$'; rc=$$?; \
	scripts/test-summary build-tsan; \
	if ls $(TSAN_REPORTS)/report.* >/dev/null 2>&1; then \
		echo "== ThreadSanitizer reports ($(TSAN_REPORTS)/report.<pid>):"; \
		grep -h '^SUMMARY' $(TSAN_REPORTS)/report.* | sort | uniq -c | sort -rn; rc=1; \
	fi; exit $$rc

install: build
	cmake --install $(BUILD)

# Debian's hardening flags (fortify, stack protector, relro, bindnow) when dpkg-buildflags is here.
PKG_BUILDFLAGS = DEB_BUILD_MAINT_OPTIONS=hardening=+all dpkg-buildflags --get
package:
	@if command -v dpkg-buildflags >/dev/null; then \
		cflags="$$($(PKG_BUILDFLAGS) CPPFLAGS) $$($(PKG_BUILDFLAGS) CFLAGS)"; \
		ldflags="$$($(PKG_BUILDFLAGS) LDFLAGS)"; \
	fi; \
	cmake -S . -B $(PKG_BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DCMAKE_INSTALL_PREFIX=/usr \
		-DKVN_BUILD_TESTS=OFF -DCMAKE_C_FLAGS="$$cflags" -DCMAKE_EXE_LINKER_FLAGS="$$ldflags" \
		-DCMAKE_SHARED_LINKER_FLAGS="$$ldflags" -DCMAKE_MODULE_LINKER_FLAGS="$$ldflags" \
		$(CMAKE_ARGS)
	cmake --build $(PKG_BUILD) -j$(JOBS)
	cd $(PKG_BUILD) && cpack -G DEB
	@ls $(PKG_BUILD)/*.deb

# The packaging and deployment checks CI runs (scripts/install-deps --checks installs their tools).
check-package:
	scripts/install-deps --checks
	scripts/check-package $(PKG_BUILD)

check-ansible:
	scripts/check-ansible $(PKG_BUILD)

clean:
	rm -rf $(BUILD) build-asan $(FUZZ_BUILD) build-tsan $(PKG_BUILD)
