/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C ABI of the Mitosis user-space library (libmitosis, crate `mitosis`): a shared
 * library (libmitosis.so) and a static one (libmitosis.a). Every function returns 0 or
 * a negative errno. Link with -lmitosis. The struct layouts and constants below are
 * checked against the Rust definitions by lib/tests/c_abi.rs (compile-time asserts).
 */
#ifndef MITOSIS_H
#define MITOSIS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MITOSIS_MAX_DEVICES 4

struct mitosis;

struct mitosis_header {
	uint32_t abi_version;
	uint32_t size;
};

struct mitosis_device_info {
	char name[32];
	uint32_t port_state;		/* enum ib_port_state; 4 = ACTIVE */
	uint32_t max_fast_reg_page_list_len;
	uint32_t max_qp_rd_atom;
	uint32_t _pad;
};

struct mitosis_counters {
	uint64_t conns_established, conns_failed, conns_accepted, conns_closed;
	uint64_t ctrl_msgs_sent, ctrl_msgs_received;
	uint64_t read_wrs_posted, read_doorbells, bytes_read, read_errors, read_timeouts;
	uint64_t regions_live, region_opens, region_opens_refused, mrs_live;
	uint64_t snapshots_live, snapshot_pages, resumes, resumes_failed;
	uint64_t pages_fetched, pages_zeroed, fetch_failures;
	uint64_t remote_faults, vmas_local, files_refused, ws_recorded, ws_pages_replayed;
	uint64_t ws_reports_kept, huge_pages_captured, readahead_windows;
};

/* Same layout as mitosis_abi::ioctl::StatusArgs (456 bytes). */
struct mitosis_status {
	struct mitosis_header hdr;
	uint32_t n_devices;
	uint32_t n_connections;
	uint32_t listen_port;
	uint32_t _pad;
	struct mitosis_device_info devices[MITOSIS_MAX_DEVICES];
	struct mitosis_counters counters;
};

int mitosis_open(struct mitosis **out);
void mitosis_close(struct mitosis *m);
int mitosis_version(const struct mitosis *m, uint32_t *abi_version);
/* out_size: sizeof(*out). An older, shorter struct gets its prefix; a newer, longer
 * one zeros past what the library knows; less than offsetof(counters) is -EINVAL. */
int mitosis_status(const struct mitosis *m, struct mitosis_status *out, size_t out_size);

/*
 * Remote fork. A snapshot handle is text: "IP:PORT/ID/SECRET[/CLOCK_MS]" (secret: 32 hex digits),
 * at most MITOSIS_HANDLE_MAX bytes with the NUL.
 *
 * mitosis_fork_prepare returns twice, like fork(): 1 in the caller, with the handle in
 * `handle` (the snapshot lives until released), and 0 in every child resumed from it.
 * mitosis_fork_resume does not return on success; on failure the caller is unchanged.
 */
#define MITOSIS_HANDLE_MAX 128
#define MITOSIS_RESUME_EAGER 1u
#define MITOSIS_RELEASE_FORCE 1u
int mitosis_fork_prepare(const struct mitosis *m, char *handle, uint32_t handle_len);
int mitosis_fork_resume(const struct mitosis *m, const char *handle, uint32_t flags);
int mitosis_fork_release(const struct mitosis *m, const char *handle, uint32_t flags);

/*
 * In a child (mitosis_fork_prepare returned 0): the report of the resume that made
 * this process. Times are CLOCK_MONOTONIC nanoseconds (resume_start_ns as the kernel
 * reads it, without a time namespace's offset). out_size: sizeof(*out); a shorter
 * struct gets its prefix. -ENOENT in a process that was not resumed.
 */
struct mitosis_resumed {
	uint64_t resume_start_ns;	/* the resume call entering the module */
	uint64_t resume_ns;		/* from then to the child's first instruction */
	uint64_t in_module_ns;		/* of which in the module, including: */
	uint64_t connect_ns;		/*   the connection (0 when pooled) */
	uint64_t open_ns;		/*   the open RPC at the parent */
	uint64_t fetch_ns;		/*   the descriptor batch, a working-set record */
	uint64_t eager_pages;		/* pages read before the child ran: all (eager) */
	uint64_t prefetched_pages;	/*   or the batch's and the record's */
	uint64_t round_trips;		/* network round trips of the call */
};
int mitosis_resumed(struct mitosis_resumed *out, size_t out_size);

#ifdef __cplusplus
}
#endif

#endif /* MITOSIS_H */
