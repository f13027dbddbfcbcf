mitosis-test driver --peer "$MPEER" --demo --size 2M
