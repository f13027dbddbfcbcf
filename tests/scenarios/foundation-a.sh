# Foundation scenarios, guest A: local checks, then serve guest B's driver.
rc=0
mitosis-test local || rc=1
mitosis-test abi || rc=1
mitosis-test agent || rc=1
mitosis status
rmmod mitosis || { echo "final rmmod failed"; rc=1; }
exit $rc
