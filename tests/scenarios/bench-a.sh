# Benchmark, guest A: seeds of 1 MiB, 64 MiB and 1 GiB (docs/benchmarks.md).
rc=0
mitosis-test bench-parent --sizes "${MSIZES:-1,64,1024}" --burst 8 || rc=1
mitosis status
exit $rc
