# Demo, guest B: read a 64 MiB region of A by one-sided RDMA READs, verify, report.
rc=0
mitosis-test local || rc=1
mitosis-test driver --peer "$MPEER" --demo || rc=1
echo "--- mitosis status on B after the demo ---"
mitosis status
rmmod mitosis || rc=1
exit $rc
