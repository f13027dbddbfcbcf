# Demo, guest B: two children of guest A's snapshot, each verifying the data structure
# and printing its timings.
rc=0
mitosis-test fork-demo-remote --peer "$MPEER" --children 2 || rc=1
echo "--- mitosis status on B after the demo ---"
mitosis status
rmmod mitosis || rc=1
exit $rc
