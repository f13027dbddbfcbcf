/* SPDX-License-Identifier: GPL-2.0 */
/*
 * fork-dyn: a dynamically linked program (libc.so.6, ld-linux) that snapshots itself
 * through the C ABI of libmitosis. Children check that the shared library's text and
 * data came with the snapshot: libc functions work, libc's own globals (optind, the
 * stdout FILE, errno in libc's TLS) hold the seed's values, and the heap is intact.
 *
 *   fork-dyn          prepare; print "HANDLE <handle>" and exit (the snapshot stays)
 *   child's stdin:    one line naming the guest (its results are tagged with it)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "mitosis.h"

static int by_value(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

static void result(const char *guest, const char *check, int pass, const char *detail)
{
	printf("MITOSIS-RESULT {\"guest\":\"%s\",\"check\":\"%s\",\"pass\":%s,\"detail\":\"%s\"}\n",
	       guest, check, pass ? "true" : "false", detail);
}

int main(void)
{
	struct mitosis *m;
	char handle[MITOSIS_HANDLE_MAX];
	char guest[16] = "unknown";
	char *heap;
	pid_t seed_parent = getpid();
	int r, failed = 0;

	if (mitosis_open(&m) != 0) {
		fprintf(stderr, "fork-dyn: cannot open /dev/mitosis\n");
		return 1;
	}
	heap = strdup("shared-library-check");
	optind = 7;		/* libc.so data */
	errno = 1234;		/* libc.so TLS */
	setvbuf(stdout, NULL, _IOLBF, 0);
	r = mitosis_fork_prepare(m, handle, sizeof(handle));
	if (r == 1) {
		printf("HANDLE %s\n", handle);
		return 0;
	}
	if (r < 0) {
		fprintf(stderr, "fork-dyn: prepare failed: %s\n", strerror(-r));
		return 1;
	}
	/* A resumed child. errno first: nothing may have touched it yet. */
	int saved_errno = errno;
	if (fgets(guest, sizeof(guest), stdin))
		guest[strcspn(guest, "\n")] = 0;

	char buf[64];
	int v[5] = { 5, 3, 9, 1, 7 };
	snprintf(buf, sizeof(buf), "%d-%s-%lx", 42, "x", strtol("ff", NULL, 16));
	qsort(v, 5, sizeof(int), by_value);
	int text_ok = strcmp(buf, "42-x-ff") == 0 && v[0] == 1 && v[4] == 9;
	result(guest, "rf-dyn-libc-text", text_ok, buf);
	failed += !text_ok;

	int data_ok = optind == 7 && saved_errno == 1234 && stdout != NULL;
	snprintf(buf, sizeof(buf), "optind %d errno %d", optind, saved_errno);
	result(guest, "rf-dyn-libc-data", data_ok, buf);
	failed += !data_ok;

	int heap_ok = heap && strcmp(heap, "shared-library-check") == 0 && getpid() != seed_parent;
	snprintf(buf, sizeof(buf), "pid %d (seed's parent %d)", (int)getpid(), (int)seed_parent);
	result(guest, "rf-dyn-heap-and-pid", heap_ok, buf);
	failed += !heap_ok;
	return failed ? 1 : 0;
}
