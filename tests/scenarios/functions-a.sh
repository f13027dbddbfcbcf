# Function scenario, guest A: the Python package's checks, the three function seeds,
# children here, handles for B (tests/scenarios/functions.py).
rc=0
python3 /scenarios/functions.py a || rc=1
echo "--- mitosis status on A ---"
mitosis status
rmmod mitosis || rc=1
exit $rc
