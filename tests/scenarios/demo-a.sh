# Demo, guest A: a program warms up (48 MiB heap + a 10000-entry map), prepares a
# snapshot, two children resume from it here while guest B resumes two more.
rc=0
mitosis-test fork-demo-parent --mib 48 --children 2 || rc=1
echo "--- mitosis status on A after the demo ---"
mitosis status
rmmod mitosis || rc=1
exit $rc
