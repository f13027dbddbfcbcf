# The module dkms installed on the host (scripts/install/dkms-install-real.sh packs
# its /lib/modules tree into this image when it ran): `modprobe` finds it through
# modules.dep, loads it with an option, the device works, `modprobe -r` removes it.
# Then the image's own module is loaded again for the rest of the scenario.
# Sourced by a scenario script; reports the check `dkms-modprobe`.
dkms_modprobe_check() {
  local krel ko detail="" pass=true
  krel=$(uname -r)
  ko=/lib/modules/$krel/updates/dkms/mitosis.ko
  fail() { pass=false; detail="$detail$1; "; }
  if [ ! -e "$ko" ] && [ ! -e "$ko.xz" ] && [ ! -e "$ko.gz" ] && [ ! -e "$ko.zst" ]; then
    fail "no $ko in this image"
  else
    grep -q 'updates/dkms/mitosis.ko' "/lib/modules/$krel/modules.dep" || fail "modules.dep does not list it"
    rmmod mitosis || fail "rmmod of the image's module failed"
    if modprobe mitosis io_timeout_ms=4321; then
      grep -q '^mitosis ' /proc/modules || fail "not in /proc/modules after modprobe"
      [ "$(cat /sys/module/mitosis/parameters/io_timeout_ms 2>/dev/null)" = 4321 ] \
        || fail "the modprobe option did not reach the module"
      [ -c /dev/mitosis ] || fail "no /dev/mitosis"
      mitosis status >/dev/null 2>&1 || fail "mitosis status failed on the dkms-built module"
      modprobe -r mitosis || fail "modprobe -r failed"
      grep -q '^mitosis ' /proc/modules && fail "still loaded after modprobe -r"
    else
      fail "modprobe mitosis failed"
    fi
    grep -q '^mitosis ' /proc/modules || insmod /mitosis.ko || fail "insmod of the image's module failed"
  fi
  [ -n "$detail" ] || detail="modprobe loaded $ko (kernel $krel) with io_timeout_ms=4321, /dev/mitosis answered, modprobe -r removed it"
  detail=$(printf '%s' "$detail" | sed 's/["\\]/ /g')
  echo "MITOSIS-RESULT {\"guest\":\"$MROLE\",\"check\":\"dkms-modprobe\",\"pass\":$pass,\"detail\":\"$detail\"}"
  $pass
}
