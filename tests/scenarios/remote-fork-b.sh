# Remote fork, guest B: children of A's snapshot and the failure cases (wrong secret,
# unknown and released ids, rmmod with a child running, parent guest gone).
rc=0
echo 1 > /proc/sys/kernel/print-fatal-signals 2>/dev/null
mitosis-test fork-remote --peer "$MPEER" --children 4 || rc=1
mitosis status
dmesg | grep -A24 "fatal signal" | head -50
dmesg | grep "faulting child gets SIGBUS" | head -3
dmesg | grep -q "faulting child gets SIGBUS" || { echo "no SIGBUS log line"; rc=1; }
# The vDSO-collision check must have gone through the module's refusal.
dmesg | grep -q "overlaps this process's vDSO" || { echo "no vDSO overlap log line"; rc=1; }
rmmod mitosis || { echo "final rmmod failed"; rc=1; }
exit $rc
