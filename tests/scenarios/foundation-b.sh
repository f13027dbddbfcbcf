# Foundation scenarios, guest B: local checks, then scenarios 2-4 against A.
rc=0
mitosis-test local || rc=1
mitosis-test abi || rc=1
mitosis-test driver --peer "$MPEER" || rc=1
mitosis status
rmmod mitosis || { echo "final rmmod failed"; rc=1; }
exit $rc
