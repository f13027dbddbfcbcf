# Adversarial scenario, guest A: the host under attack. Short timeouts (handshakes
# reaped after 1 s, a silent parent's open times out after 5 s); serves B's driver
# through the agent; then allocation-failure injection over prepare on this host.
rc=0
# Which sanitizers this kernel has (the KASAN variant prints its line here).
dmesg | grep -m1 -i "AddressSanitizer" || echo "no address sanitizer in this kernel"
rmmod mitosis && insmod /mitosis.ko connect_timeout_ms=1000 io_timeout_ms=500 \
  || { echo "MITOSIS-SETUP-FAILED reload with short timeouts"; rc=1; }
mitosis-test agent || rc=1
mitosis-test fault-inject prepare || rc=1
mitosis status
dmesg | grep "mitosis:" | tail -30
rmmod mitosis || { echo "final rmmod failed"; rc=1; }
exit $rc
