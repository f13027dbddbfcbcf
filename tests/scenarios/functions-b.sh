# Function scenario, guest B: cold starts and remote children of A's function seeds,
# the CLI's failure paths, the module unloaded last (tests/scenarios/functions.py).
rc=0
python3 /scenarios/functions.py b || rc=1
exit $rc
