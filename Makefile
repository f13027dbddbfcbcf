# Mitosis: build, test and demo entry points. See README.md.
#
#   make            module + user-space tools (builds the cached test kernel if needed)
#   make check      everything a fresh machine needs, host tests, two-guest scenarios
#   make demo       two-guest remote-fork demo with its numbers
#   make bench      remote-fork benchmark (KVARIANT=perf for the numbers in docs/)
#
# KDIR=/path/to/kernel/build builds against another prepared CONFIG_RUST kernel.
# KVARIANT=perf uses the kernel without debug options (benchmarks).

SHELL := /bin/bash
OUT ?= out
KVARIANT ?= debug
GUEST_TARGET := x86_64-unknown-linux-gnu
GUEST_BIN := target/guest/$(GUEST_TARGET)/release
TIMEOUT ?= 1500

ifdef KDIR
kdir := $(KDIR)
kernel_dep :=
else
kdir = $$(cat $(OUT)/kdir-$(KVARIANT))
kernel_dep := kernel
endif
# The module is built with the kernel's compiler: LLVM=1 for a kernel built with clang
# (the kasan variant here, and distributions' clang-built kernels), read from the
# kernel's own configuration so that dkms builds for any installed kernel get it too.
kflags = $$(grep -qsx CONFIG_CC_IS_CLANG=y $(kdir)/include/config/auto.conf && echo LLVM=1)
# The guest runner with this variant's kernel, image and boot parameters.
vmrun_with = scripts/vmrun.py --kernel $(kdir)/arch/x86/boot/bzImage \
	--append "$$(cat $(kdir)/.mitosis-bootparams 2>/dev/null)"
vmrun = $(vmrun_with) --initrd $(OUT)/initramfs-$(KVARIANT).cpio.gz
# Guests with the Python runtime (function scenarios): 1.5 GiB, the runtime unpacks
# to about 130 MB of initramfs.
vmrun_py = $(vmrun_with) --initrd $(OUT)/initramfs-python-$(KVARIANT).cpio.gz --mem 1536

.PHONY: bench-functions plot-libs install dkms-install test-install test-dkms-upgrade all setup kernel module userspace guest-bins image image-python test-functions demo-memory test-host test-guests test-fork test-adversarial check demo bench fmt clippy clean

all: module userspace

setup:
	@scripts/setup.sh

$(OUT):
	@mkdir -p $(OUT)

kernel: setup | $(OUT)
	@scripts/build-kernel.sh $(KVARIANT) > $(OUT)/kdir-$(KVARIANT).tmp && mv $(OUT)/kdir-$(KVARIANT).tmp $(OUT)/kdir-$(KVARIANT)

# Objects and generated bindings belong to one kernel build: switching KDIR (or a
# rebuilt kernel) starts over.
module: $(kernel_dep)
	@k=$(kdir); if [ "$$(cat .kdir-built 2>/dev/null)" != "$$k" ]; then \
		$(MAKE) -s -C $$k M=$(CURDIR) $(kflags) clean; rm -f ffi/bindings_generated.rs; echo "$$k" > .kdir-built; fi
	$(MAKE) -C $(kdir) M=$(CURDIR) $(kflags) modules

userspace:
	cargo build --release --workspace

guest-bins:
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target $(GUEST_TARGET) \
		--target-dir target/guest -p mitosis-guest-tests -p mitosis-cli -p mitosis
	# A dynamically linked C program (shared-library scenario), through the C ABI.
	gcc -O2 -Wall -Werror -o $(GUEST_BIN)/fork-dyn tests/guest/c/fork_dyn.c -Ilib/include \
		$(GUEST_BIN)/libmitosis.a -static-libgcc -lpthread -ldl -lm
	# The adversarial scenario's hostile peer: user-space rdma-core.
	gcc -O2 -Wall -Werror -o $(GUEST_BIN)/hostile-peer tests/guest/c/hostile_peer.c -lrdmacm -libverbs
	# `setarch -R` for the benchmark's cold starts at fixed addresses.
	gcc -O2 -Wall -Werror -static -no-pie -o $(GUEST_BIN)/norandom tests/guest/c/norandom.c
	# The launcher as the guests run it: static and not position-independent, so it
	# runs at the same addresses every time and QEMU reuses the code it translated
	# for the previous launch (a randomised launcher took 30-35 ms to reach the
	# module, 7-10 ms this way: docs/benchmarks.md). The test programs stay
	# position-independent; `make install` builds the usual executable.
	RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --release \
		--target $(GUEST_TARGET) --target-dir target/guest-launcher -p mitosis-cli --bin mitosis
	cp target/guest-launcher/$(GUEST_TARGET)/release/mitosis $(GUEST_BIN)/mitosis-fixed

image: module guest-bins userspace | $(OUT)
	scripts/build-image.sh mitosis.ko $(GUEST_BIN) target/release/libmitosis.so \
		$(OUT)/initramfs-$(KVARIANT).cpio.gz

# The image plus the cached Python runtime (concatenated archives: the kernel unpacks both).
image-python: image
	@py=$$(scripts/build-python.sh) && cat $(OUT)/initramfs-$(KVARIANT).cpio.gz "$$py" \
		> $(OUT)/initramfs-python-$(KVARIANT).cpio.gz

fmt:
	cargo fmt --all -- --check
	rustfmt --check --edition 2021 src/mitosis_main.rs

clippy:
	cargo clippy --workspace --all-targets -- -D warnings

test-host: setup
	# The C ABI test links the shared library, which `cargo test` alone does not build.
	cargo build --workspace
	cargo test --workspace

# When test-install ran as root, guest A also modprobes the module dkms installed (its
# /lib/modules tree appended to the image) before the scenario.
DKMS_MODTREE = $(OUT)/dkms-modules-$(KVARIANT).cpio.gz
test-guests: image
	@initrd=$(OUT)/initramfs-$(KVARIANT).cpio.gz expect=tests/scenarios/foundation.expect; \
	if [ -s $(DKMS_MODTREE) ]; then \
		cat $$initrd $(DKMS_MODTREE) > $(OUT)/initramfs-dkms-$(KVARIANT).cpio.gz; \
		initrd=$(OUT)/initramfs-dkms-$(KVARIANT).cpio.gz; \
		expect="$$expect --expect tests/scenarios/dkms-modprobe.expect"; \
	else echo "dkms-modprobe: SKIPPED (not run): no dkms-installed module tree (make test-install as root)"; fi; \
	set -x; $(vmrun_with) --initrd $$initrd --scenario foundation --expect $$expect \
		--out $(OUT)/foundation-$(KVARIANT) --timeout $(TIMEOUT)

test-fork: image
	$(vmrun) --scenario remote-fork --expect tests/scenarios/remote-fork.expect \
		--out $(OUT)/remote-fork-$(KVARIANT) --timeout $(TIMEOUT)

# Hostile peers and parents, fault injection and ioctl fuzzing (tests/guest/src/adversarial.rs);
# `make check` runs it on the debug kernel (lockdep, kmemleak) and on the KASAN kernel.
test-adversarial: image
	$(vmrun) --scenario adversarial --expect tests/scenarios/adversarial.expect \
		--out $(OUT)/adversarial-$(KVARIANT) --timeout $(TIMEOUT)

# Real Python functions remote-forked between the guests (tests/scenarios/functions.py).
test-functions: image-python
	$(vmrun_py) --scenario functions --expect tests/scenarios/functions.expect \
		--out $(OUT)/functions-$(KVARIANT) --timeout $(TIMEOUT)

check: fmt test-host test-install clippy test-guests test-fork test-functions test-adversarial
	$(MAKE) KVARIANT=kasan test-adversarial
	$(MAKE) test-dkms-upgrade

# Remote-fork benchmark (docs/benchmarks.md): 3 GiB guests so a 1 GiB seed fits.
# BENCH_SIZES=64 (MiB, comma-separated) measures only those seeds. BENCH_SMP_B=2 gives
# guest B that many vCPUs (results in bench-VARIANT-smp-bN; docs/bench-resume.png is
# drawn only from the standard run).
# The summary table and docs/bench-resume.png from its results.
PLOT_LIBS = $(HOME)/.cache/mitosis/plot-pillow-11.0.0
plot-libs:
	@[ -d $(PLOT_LIBS) ] || /usr/bin/python3.11 -m pip install --quiet --disable-pip-version-check \
		--only-binary=:all: --target $(PLOT_LIBS) pillow==11.0.0

# BENCH_PROFILE=1 adds CPU profiles of guest B (perf, scripts/build-perf.sh) to the
# same run; results in bench-VARIANT-profile, docs/bench-resume.png left as it is.
bench_out = $(OUT)/bench-$(KVARIANT)$(if $(BENCH_SMP_B),-smp-b$(BENCH_SMP_B))$(if $(BENCH_PROFILE),-profile)
bench_initrd = $(OUT)/initramfs-$(if $(BENCH_PROFILE),profile-)$(KVARIANT).cpio.gz
bench: image plot-libs
	$(if $(BENCH_PROFILE),@perf=$$(scripts/build-perf.sh) && \
		cat $(OUT)/initramfs-$(KVARIANT).cpio.gz "$$perf" > $(bench_initrd))
	$(vmrun_with) --initrd $(bench_initrd) --scenario bench --mem 3072 --out $(bench_out) \
		--timeout 3000 $(if $(BENCH_SIZES),--append MSIZES=$(BENCH_SIZES)) \
		$(if $(BENCH_SMP_B),--smp b=$(BENCH_SMP_B)) $(if $(BENCH_PROFILE),--append MPROFILE=1)
	PYTHONPATH=$(PLOT_LIBS) /usr/bin/python3.11 scripts/bench-report.py \
		$(bench_out)/results.json $(if $(BENCH_SMP_B)$(BENCH_PROFILE),,docs/bench-resume.png)

# Function benchmark (docs/benchmarks.md): 3 cold starts and 3 children per launcher
# variant and function; the table and docs/functions-bench.png from its results.
bench-functions: image-python plot-libs
	$(vmrun_py) --scenario functions --append MBENCH=1 --out $(OUT)/bench-functions-$(KVARIANT) --timeout 3000
	PYTHONPATH=$(PLOT_LIBS) /usr/bin/python3.11 scripts/bench-functions-report.py \
		$(OUT)/bench-functions-$(KVARIANT)/results.json docs/functions-bench.png

# The function demo: three Python functions, cold start against remote children.
demo: image-python
	$(vmrun_py) --scenario functions --expect tests/scenarios/functions.expect \
		--out $(OUT)/demo-$(KVARIANT) --timeout $(TIMEOUT)

# The memory demo: a 48 MiB Rust program, children on both guests.
demo-memory: image
	$(vmrun) --scenario demo --expect tests/scenarios/demo.expect --out $(OUT)/demo-memory-$(KVARIANT) --timeout $(TIMEOUT)

clean:
	-$(MAKE) -C $(kdir) M=$(CURDIR) clean
	cargo clean
	rm -rf $(OUT) ffi/bindings_generated.rs

# Installing on an RDMA host (docs/install.md). Build against the running kernel:
#   make KDIR=/lib/modules/$(uname -r)/build && sudo make KDIR=/lib/modules/$(uname -r)/build install
PREFIX ?= /usr/local
DESTDIR ?=
PYTHONDIR ?= $(shell python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || echo $(PREFIX)/lib/python3/dist-packages)
UDEVDIR ?= /etc/udev/rules.d

install: module userspace
	$(MAKE) -C $(kdir) M=$(CURDIR) $(kflags) INSTALL_MOD_PATH=$(DESTDIR) INSTALL_MOD_DIR=updates modules_install
	install -D -m 0755 target/release/mitosis $(DESTDIR)$(PREFIX)/bin/mitosis
	install -D -m 0644 target/release/libmitosis.so $(DESTDIR)$(PREFIX)/lib/libmitosis.so
	install -D -m 0644 target/release/libmitosis.a $(DESTDIR)$(PREFIX)/lib/libmitosis.a
	install -D -m 0644 lib/include/mitosis.h $(DESTDIR)$(PREFIX)/include/mitosis.h
	install -D -m 0644 python/mitosis/__init__.py $(DESTDIR)$(PYTHONDIR)/mitosis/__init__.py
	install -D -m 0644 scripts/install/60-mitosis.rules $(DESTDIR)$(UDEVDIR)/60-mitosis.rules
	install -D -m 0644 scripts/install/mitosis.conf $(DESTDIR)/etc/modprobe.d/mitosis.conf
	@if [ -z "$(DESTDIR)" ]; then \
		getent group mitosis >/dev/null || groupadd --system mitosis; \
		depmod -a "$$(cat $(kdir)/include/config/kernel.release)" 2>/dev/null || true; \
		udevadm control --reload-rules 2>/dev/null || true; \
		ldconfig 2>/dev/null || true; \
	fi
	@echo "installed; load with: modprobe mitosis (options in /etc/modprobe.d/mitosis.conf)"

# DKMS: the sources go to /usr/src/mitosis-VERSION; dkms rebuilds the module for every
# kernel it installs (dkms.conf). KVER: the kernel to build and install for (default
# the running one).
DKMS_VERSION := $(shell sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' dkms.conf)
KVER ?= $(shell uname -r)
dkms-install:
	rm -rf $(DESTDIR)/usr/src/mitosis-$(DKMS_VERSION)
	mkdir -p $(DESTDIR)/usr/src/mitosis-$(DKMS_VERSION)
	git ls-files -z | xargs -0 cp --parents -t $(DESTDIR)/usr/src/mitosis-$(DKMS_VERSION)
	@if [ -z "$(DESTDIR)" ]; then dkms add mitosis/$(DKMS_VERSION) && \
		dkms build mitosis/$(DKMS_VERSION) -k $(KVER) && dkms install mitosis/$(DKMS_VERSION) -k $(KVER); fi

# The install targets into a staging tree, checked file by file, and the staged DKMS
# tree built by dkms itself in private trees (part of make check).
test-install: module userspace
	rm -rf $(OUT)/install-test
	$(MAKE) -s install DESTDIR=$(CURDIR)/$(OUT)/install-test PREFIX=/usr PYTHONDIR=/usr/lib/python3/dist-packages
	$(MAKE) -s dkms-install DESTDIR=$(CURDIR)/$(OUT)/install-test
	scripts/install/check-staged.sh $(OUT)/install-test $(DKMS_VERSION)
	scripts/install/dkms-build.sh $(OUT)/install-test $(DKMS_VERSION) $(kdir)
	scripts/install/dkms-install-real.sh $(kdir) $(DKMS_VERSION) $(DKMS_MODTREE)

# A kernel of another release installed after the module: the kasan variant's
# (6.12.117-kasan, built with clang). Its install hook must build the module for it, with
# clang, beside the installed one (as root; says SKIPPED otherwise).
test-dkms-upgrade: kernel
	$(MAKE) -s KVARIANT=kasan kernel
	scripts/install/dkms-install-real.sh $(kdir) $(DKMS_VERSION) "" $$(cat $(OUT)/kdir-kasan)
