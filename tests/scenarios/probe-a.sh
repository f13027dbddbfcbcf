mitosis-test agent
