# The two set-up commands of the README are `make demo` and `make test`; both
# build the compiled data path first (an editable install builds it in place).
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests and benchmarks use: the peers lb is measured
# against, the load generator, curl for the demo test, openssl (s_client)
# for the TLS tests, keepalived for the VRRP failover tests (tests/test_ha.py),
# bird2 for the BGP/ECMP tests (tests/test_ha_bgp.py) and iproute2 (ip netns)
# to build their network namespaces, and ethtool for the bench's hosts
# topology (bench/hosts.py: GRO on and TSO off on its veth links);
# nghttp2-client (nghttp, h2load) for the HTTP/2 tests and benchmark;
# prometheus for promtool (tests/test_metrics.py checks the scrape with it)
# and chromium, headless, for the stats page's test; varnish, the second
# anchor of the cache benchmark (bench cache_hit).
APT_PACKAGES := haproxy nginx-light libnginx-mod-stream wrk curl openssl keepalived bird2 iproute2 ethtool nghttp2-client prometheus chromium varnish
# What building the compiled data path needs beyond a compiler: the headers of
# OpenSSL (TLS), libnghttp2 (HTTP/2), libxcrypt (htpasswd hashes) and liburing
# (tcp forwarding's batched calls, lb/fastpath/uring.pxi).
BUILD_DEPS := libssl-dev libnghttp2-dev libcrypt-dev liburing-dev

.PHONY: install build-deps demo test test-deps bench debug clean deb rpm deb-deps rpm-deps asan-test fuzz fuzz-deps cache-conformance

build-deps:
	@$(call apt_ensure,$(BUILD_DEPS))

install: build-deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

demo: install
	$(PYTHON) -m lb demo

test-deps:
	@missing=""; for cmd in haproxy nginx wrk curl openssl keepalived bird ip ethtool h2load nghttp promtool chromium varnishd; do \
	  command -v $$cmd >/dev/null || [ -x /usr/sbin/$$cmd ] || [ -x /sbin/$$cmd ] || missing=1; done; \
	[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing=1; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi

test: test-deps install
	$(PYTHON) -m pytest -q

bench: test-deps install
	$(PYTHON) -m bench

# The public HTTP caching conformance suite (https://cache-tests.fyi) against
# lb, nginx proxy_cache and Varnish, one after the other, printing the three
# totals (docs/cache.md, "Conformance"). Optional: it needs a checkout of
# http-tests/cache-tests (CACHE_TESTS, default /work/cache-tests), node, and
# varnish for the third column; not part of `make test`.
CACHE_TESTS ?= /work/cache-tests
cache-conformance: install
	@command -v varnishd >/dev/null || [ -x /usr/sbin/varnishd ] || \
	  ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq varnish >/dev/null)
	$(PYTHON) -m bench.cache_conformance --suite $(CACHE_TESTS) --failed

# The functional suite against the compiled part built with AddressSanitizer
# and UndefinedBehaviorSanitizer, in a copy of the tree (build/asan), so the
# normal build stays. The interpreter is not instrumented: libasan is
# preloaded into it and into every lb it starts. The sanitizers write to
# stderr, so the run keeps everything: pytest's output uncaptured in
# build/asan/pytest.log, and each lb's log in its test's directory under
# build/asan/tmp. Any report there fails the run, even one from a worker the
# supervisor replaced and whose test passed.
ASAN_DIR := build/asan
asan-test: test-deps install
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	tar --exclude=./build --exclude=./.git --exclude='./lb/*.so' --exclude=./lb/_fastpath.c -cf - . | tar -xf - -C $(ASAN_DIR)
	cd $(ASAN_DIR) && LB_SANITIZE=1 $(PYTHON) setup.py build_ext --inplace -q
	@# the tools the tests run beside lb get no libasan (curl hangs with it)
	@mkdir -p $(ASAN_DIR)/bin; for tool in curl nginx haproxy wrk openssl keepalived bird ip h2load nghttp; do \
	  path=$$(command -v $$tool) || continue; \
	  printf '#!/bin/sh\nunset LD_PRELOAD\nexec %s "$$@"\n' "$$path" > $(ASAN_DIR)/bin/$$tool; \
	  chmod +x $(ASAN_DIR)/bin/$$tool; done
	@cd $(ASAN_DIR) && rc=0; PATH="$(CURDIR)/$(ASAN_DIR)/bin:$$PATH" \
	  LD_PRELOAD=$$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
	  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(PYTHON) -m pytest -q -s -p no:cacheprovider --basetemp=tmp $(ASAN_TESTS) > pytest.log 2>&1 || rc=$$?; \
	  tail -n 5 pytest.log; \
	  if grep -rlE "runtime error:|ERROR: AddressSanitizer" pytest.log tmp; then \
	    grep -rhE -A12 "runtime error:|ERROR: AddressSanitizer" pytest.log tmp | head -n 200; \
	    echo "asan-test: sanitizer reports (files above)"; exit 1; fi; \
	  [ $$rc -eq 0 ] && echo "asan-test: no sanitizer reports"; exit $$rc

# Coverage-guided fuzzing (fuzz/): atheris drives each target of fuzz/targets.py
# with libFuzzer, over the compiled module built with clang's coverage
# counters and AddressSanitizer in a copy of the tree (build/fuzz), as
# asan-test does. Each target runs FUZZ_SECONDS from its corpus
# (build/fuzz/corpus/TARGET, seeded from fuzz/seeds/TARGET and kept between
# runs); a crash is saved in fuzz/crashes/TARGET/, where
# tests/test_fuzz_cases.py replays it in the normal suite, and fails the run.
# FUZZ_TARGETS picks some; FUZZ_JOBS runs that many targets at once.
FUZZ_DIR := build/fuzz
FUZZ_SECONDS ?= 10
FUZZ_JOBS ?= 1
FUZZ_TARGETS ?= http_request http_response chunked proxy config tls_record jwt cache_range
FUZZ_DEPS := clang
fuzz-deps:
	@$(call apt_ensure,$(FUZZ_DEPS))
	@$(PYTHON) -c "import atheris" 2>/dev/null || $(PYTHON) -m pip install --quiet --disable-pip-version-check 'atheris>=2.3'

fuzz: fuzz-deps build-deps
	mkdir -p $(FUZZ_DIR)/tree
	tar --exclude=./build --exclude=./.git --exclude='./lb/*.so' --exclude=./lb/_fastpath.c -cf - . | tar -xf - -C $(FUZZ_DIR)/tree
	cd $(FUZZ_DIR)/tree && LB_FUZZ=1 $(PYTHON) setup.py build_ext --inplace -q
	cd $(FUZZ_DIR)/tree && $(PYTHON) fuzz/campaign.py --seconds $(FUZZ_SECONDS) --jobs $(FUZZ_JOBS) \
	  --work $(CURDIR)/$(FUZZ_DIR) --crashes $(CURDIR)/fuzz/crashes --seeds $(CURDIR)/fuzz/seeds $(FUZZ_TARGETS)

# line tracing and -O0 -g3, for gdb and coverage of the Cython code
debug:
	LB_DEBUG=1 $(PYTHON) setup.py build_ext --inplace --cython-always \
	  --cython-directives="linetrace=True"

clean:
	rm -rf build dist *.egg-info lb/_fastpath.c lb/*.so lb/*.html

# Packages, built from a source tarball of this tree (packaging/): the .deb
# and the Debian source package, or the .rpm and .src.rpm, land in dist/.
# Debian's own tools build them; Cython 3 for the tarball's generated C comes
# from $(PYTHON) (pip-installed there if missing).
DEB_BUILD_DEPS := build-essential dpkg-dev debhelper dh-python libssl-dev libnghttp2-dev libcrypt-dev liburing-dev python3-all-dev python3-click python3-setuptools
RPM_BUILD_DEPS := rpm gcc libssl-dev libnghttp2-dev libcrypt-dev liburing-dev python3-dev python3-click python3-setuptools

# apt-get install, unless every package named is installed already
apt_ensure = [ "$$(dpkg-query -W -f='$${db:Status-Abbrev}\n' $(1) 2>/dev/null | grep -c '^ii')" = "$(words $(1))" ] || \
	{ $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(1) >/dev/null; }

deb-deps:
	@$(call apt_ensure,$(DEB_BUILD_DEPS))

rpm-deps:
	@$(call apt_ensure,$(RPM_BUILD_DEPS))

deb: deb-deps
	PYTHON=$(PYTHON) packaging/build-deb.sh

rpm: rpm-deps
	PYTHON=$(PYTHON) packaging/build-rpm.sh
