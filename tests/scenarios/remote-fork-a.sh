# Remote fork, guest A: the parent. Builds and prepares the seed world, runs local
# children, serves guest B (two-hop grandchild, release), then unloads the module with
# a snapshot still published (must be clean) and powers off while B's lazy child
# still has unfetched pages.
rc=0
echo 1 > /proc/sys/kernel/print-fatal-signals 2>/dev/null
# Swap on zram: the seed pages part of its memory out before prepare.
{ echo 64M > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0; } \
  || echo "no swap device (the swapped-out-pages check will fail)"
cat /proc/swaps
mitosis-test fork-parent --children 4 || rc=1
mitosis status
dmesg | grep "mitosis:" | tail -20
rmmod mitosis || { echo "rmmod with a live snapshot failed"; rc=1; }
exit $rc
