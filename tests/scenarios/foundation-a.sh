# Foundation scenarios, guest A: local checks, then serve guest B's driver.
rc=0
# Only when the image carries the module tree dkms installed on the host (Makefile).
if [ -d "/lib/modules/$(uname -r)" ]; then
  . /scenarios/dkms-modprobe.sh
  dkms_modprobe_check || rc=1
fi
mitosis-test local || rc=1
mitosis-test abi || rc=1
mitosis-test agent || rc=1
mitosis status
rmmod mitosis || { echo "final rmmod failed"; rc=1; }
exit $rc
