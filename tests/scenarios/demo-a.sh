# Demo, guest A: publish regions on request of guest B.
rc=0
mitosis-test local || rc=1
mitosis-test agent || rc=1
rmmod mitosis || rc=1
exit $rc
