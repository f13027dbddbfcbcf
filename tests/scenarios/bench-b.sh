# Benchmark, guest B: children of each seed, fault latency, resume bursts.
rc=0
mitosis-test bench-remote --peer "$MPEER" --burst 8 || rc=1
mitosis status
exit $rc
