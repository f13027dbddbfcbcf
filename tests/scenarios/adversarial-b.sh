# Adversarial scenario, guest B: hostile peers and parents against A (see
# tests/guest/src/adversarial.rs), allocation-failure injection over resume and
# remote faults here, then the device removed under a running child.
rc=0
# Which sanitizers this kernel has (the KASAN variant prints its line here).
dmesg | grep -m1 -i "AddressSanitizer" || echo "no address sanitizer in this kernel"
mitosis-test adversarial --peer "$MPEER" || rc=1
mitosis status
dmesg | grep "mitosis:" | tail -30
rmmod mitosis || { echo "final rmmod failed"; rc=1; }
exit $rc
