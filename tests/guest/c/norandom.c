/* SPDX-License-Identifier: GPL-2.0 */
/*
 * norandom: runs a program without address-space randomisation, as `setarch -R`
 * does (the guests have no util-linux).
 *
 *   norandom PROGRAM [ARGS...]
 *
 * The benchmark used a Python preexec_fn for this, which makes subprocess fork the
 * whole interpreter instead of vfork-ing it: about 35 ms more under emulation, counted
 * in the very cold starts it measured. Static and not position-independent, this costs
 * what /bin/true does.
 */
#include <stdio.h>
#include <sys/personality.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: norandom PROGRAM [ARGS...]\n");
		return 2;
	}
	if (personality(ADDR_NO_RANDOMIZE) == -1) {
		perror("norandom: personality");
		return 126;
	}
	execvp(argv[1], argv + 1);
	perror("norandom: exec");
	return 127;
}
