// SPDX-License-Identifier: GPL-2.0
/*
 * hostile-peer: a misbehaving Mitosis peer for the adversarial scenario, written with
 * user-space rdma-core (librdmacm + libibverbs on rxe), i.e. what anyone on the RDMA
 * network can run without a secret or the module.
 *
 *   hostile-peer flood ADDR PORT N HOLD_MS
 *       N connection requests that never complete the handshake (no QP, no RTU),
 *       held for HOLD_MS. Prints how many the module answered and how many it
 *       refused.
 *   hostile-peer garbage ADDR PORT REGION_ID SECRET_HEX WRONG_TRIES
 *       One connection: malformed and truncated control messages, a reply nobody
 *       asked for, working sets of a region not opened and with overlapping runs,
 *       WRONG_TRIES opens with wrong secrets, an unknown id, then a
 *       correct open and a READ with its key and address, a READ with a guessed
 *       key, and (on a new connection) a second open, which must hand out the same
 *       key and address (one registration for every peer), and a READ with that
 *       key at an address outside the region's (the addresses start at a random
 *       base only the reply gives out).
 *   hostile-peer serve PORT FILE SECRET_HEX [silent|lying-ws|packed=COPY|packed-short=COPY]
 *       A parent: accepts one connection at a time (with a challenge, as the module
 *       does) and answers every open with FILE as the region (descriptor first, as
 *       the module lays snapshots out, with its MAC under SECRET_HEX), registered
 *       for remote READ. With `silent`, accepts and never answers. With `lying-ws`,
 *       every reply carries a working set naming the first 32768 pages of the file
 *       and pages of VMA windows the snapshot does not have, and first-touch pages
 *       at the descriptor, past the region and of a VMA the snapshot does not have.
 *       With `packed=COPY`, every reply grants the file COPY as the packed copy of
 *       the working set (abi/src/packed.rs), whatever it holds. With
 *       `packed-short=COPY`, the same, but announced as four times its pages (at most
 *       the region's): READs past the registered copy fail at its end, while the
 *       child's READs of it are in flight.
 *
 * Every mode prints `hostile-peer: RESULT key=value ...` and exits 0 when what it
 * observed is what a hardened module must do (refusals, no answers to garbage).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <rdma/rdma_verbs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The wire format of abi/src/wire.rs. */
#define MSG_SIZE 4096
#define WIRE_MAGIC 0x4D49544Fu
#define WIRE_VERSION 9
/* Fixed part of an open's reply, before its keys (abi/src/wire.rs). */
#define REPLY_FIXED 88
/* Where `serve` registers the region and the packed copy (any base must do). */
#define SERVE_BASE 0x3a5000000000ull
#define SERVE_PACKED_BASE 0x1c7000000000ull
#define CHALLENGE_MAGIC 0x4D434831u
#define ACCEPT_DATA_LEN 20
#define HDR_LEN 24
enum { K_OPEN = 1, K_OPEN_REPLY = 2, K_CLOSE = 3, K_WORKING_SET = 4 };

#define NRECV 16
#define PAGE 4096

static void die(const char *what)
{
	fprintf(stderr, "hostile-peer: %s: %s\n", what, strerror(errno));
	exit(2);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = v >> (8 * i); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = v >> (8 * i); }
static uint32_t get32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static size_t header(uint8_t *b, uint16_t kind, uint64_t seq, int32_t status, uint32_t body)
{
	put32(b, WIRE_MAGIC);
	put16(b + 4, WIRE_VERSION);
	put16(b + 6, kind);
	put64(b + 8, seq);
	put32(b + 16, (uint32_t)status);
	put32(b + 20, body);
	return HDR_LEN;
}

/* Waits (bounded) for the next CM event on `ec`; returns its type, or -1. */
static int next_event(struct rdma_event_channel *ec, int timeout_ms, struct rdma_cm_event **out)
{
	struct pollfd p = { .fd = ec->fd, .events = POLLIN };

	if (poll(&p, 1, timeout_ms) <= 0)
		return -1;
	if (rdma_get_cm_event(ec, out))
		return -1;
	return (*out)->event;
}

static int expect_event(struct rdma_event_channel *ec, int want, int timeout_ms)
{
	struct rdma_cm_event *ev;
	int got = next_event(ec, timeout_ms, &ev);

	if (got >= 0)
		rdma_ack_cm_event(ev);
	return got == want ? 0 : (got < 0 ? -ETIMEDOUT : -got - 1000);
}

/* One RC connection with receive buffers, a send buffer and a READ buffer. */
struct conn {
	struct rdma_event_channel *ec;
	struct rdma_cm_id *id;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	uint8_t *bufs; /* NRECV receive pages, one send page, one READ page */
	struct ibv_mr *mr;
	uint64_t seq;
	/* A receive that completed while waiting for something else. */
	int pending_slot, pending_len;
	/* The server's challenge, from its accept (abi/src/wire.rs). */
	uint8_t challenge[16];
};

/* SipHash-2-4 with a 128-bit output over the concatenation of two parts, as
 * abi/src/mac.rs (the module's proofs and descriptor MACs). */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                   \
	do {                                                                       \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);          \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                             \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                             \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);          \
	} while (0)

static uint64_t get64(const uint8_t *p);

static void siphash128(const uint8_t key[16], const uint8_t *a, size_t alen, const uint8_t *b,
		       size_t blen, uint8_t out[16])
{
	uint64_t k0 = get64(key), k1 = get64(key + 8);
	uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull ^ 0xee;
	uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
	size_t len = alen + blen, i;
	uint8_t word[8];
	int n = 0;

	for (i = 0; i < len; i++) {
		word[n++] = i < alen ? a[i] : b[i - alen];
		if (n == 8) {
			uint64_t m = get64(word);

			v3 ^= m; SIPROUND; SIPROUND; v0 ^= m;
			n = 0;
		}
	}
	{
		uint64_t m = (uint64_t)len << 56;

		for (i = 0; i < (size_t)n; i++)
			m |= (uint64_t)word[i] << (8 * i);
		v3 ^= m; SIPROUND; SIPROUND; v0 ^= m;
	}
	v2 ^= 0xee;
	SIPROUND; SIPROUND; SIPROUND; SIPROUND;
	for (i = 0; i < 8; i++)
		out[i] = (v0 ^ v1 ^ v2 ^ v3) >> (8 * i);
	v1 ^= 0xdd;
	SIPROUND; SIPROUND; SIPROUND; SIPROUND;
	for (i = 0; i < 8; i++)
		out[8 + i] = (v0 ^ v1 ^ v2 ^ v3) >> (8 * i);
}

/* mac::open_proof: what an open sends instead of the secret. */
static void open_proof(const uint8_t secret[16], const uint8_t challenge[16], uint64_t id,
		       uint8_t out[16])
{
	uint8_t msg[16 + 16 + 8];

	memcpy(msg, "mitosis-open-v1", 16);
	memcpy(msg + 16, challenge, 16);
	for (int i = 0; i < 8; i++)
		msg[32 + i] = id >> (8 * i);
	siphash128(secret, msg, sizeof(msg), NULL, 0, out);
}

static uint8_t *recv_buf(struct conn *c, int i) { return c->bufs + (size_t)i * MSG_SIZE; }
static uint8_t *send_buf(struct conn *c) { return c->bufs + (size_t)NRECV * MSG_SIZE; }
static uint8_t *read_buf(struct conn *c) { return c->bufs + (size_t)(NRECV + 1) * MSG_SIZE; }

static int post_recv(struct conn *c, int i)
{
	struct ibv_sge sge = { (uintptr_t)recv_buf(c, i), MSG_SIZE, c->mr->lkey };
	struct ibv_recv_wr wr = { .wr_id = i, .sg_list = &sge, .num_sge = 1 }, *bad;

	return ibv_post_recv(c->id->qp, &wr, &bad);
}

/* PD, CQ, QP and buffers on `id`'s device, receives posted. */
static int setup_qp(struct conn *c)
{
	struct ibv_qp_init_attr attr = { 0 };

	c->pd = ibv_alloc_pd(c->id->verbs);
	c->cq = ibv_create_cq(c->id->verbs, 64, NULL, NULL, 0);
	if (!c->pd || !c->cq)
		return -1;
	attr.send_cq = attr.recv_cq = c->cq;
	attr.cap.max_send_wr = 32;
	attr.cap.max_recv_wr = NRECV;
	attr.cap.max_send_sge = attr.cap.max_recv_sge = 1;
	attr.qp_type = IBV_QPT_RC;
	attr.sq_sig_all = 1;
	if (rdma_create_qp(c->id, c->pd, &attr))
		return -1;
	c->bufs = aligned_alloc(PAGE, (size_t)(NRECV + 2) * MSG_SIZE);
	if (!c->bufs)
		return -1;
	memset(c->bufs, 0, (size_t)(NRECV + 2) * MSG_SIZE);
	c->mr = ibv_reg_mr(c->pd, c->bufs, (size_t)(NRECV + 2) * MSG_SIZE, IBV_ACCESS_LOCAL_WRITE);
	if (!c->mr)
		return -1;
	for (int i = 0; i < NRECV; i++)
		if (post_recv(c, i))
			return -1;
	c->pending_slot = -1;
	c->seq = 1;
	return 0;
}

static void conn_free(struct conn *c)
{
	if (c->id) {
		rdma_disconnect(c->id);
		if (c->id->qp)
			rdma_destroy_qp(c->id);
	}
	if (c->mr)
		ibv_dereg_mr(c->mr);
	if (c->cq)
		ibv_destroy_cq(c->cq);
	if (c->pd)
		ibv_dealloc_pd(c->pd);
	if (c->id)
		rdma_destroy_id(c->id);
	if (c->ec)
		rdma_destroy_event_channel(c->ec);
	free(c->bufs);
	memset(c, 0, sizeof(*c));
}

static int resolve(struct conn *c, const char *addr, int port)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };

	if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
		return -1;
	c->ec = rdma_create_event_channel();
	if (!c->ec || rdma_create_id(c->ec, &c->id, NULL, RDMA_PS_TCP))
		return -1;
	if (rdma_resolve_addr(c->id, NULL, (struct sockaddr *)&sa, 2000) ||
	    expect_event(c->ec, RDMA_CM_EVENT_ADDR_RESOLVED, 3000))
		return -1;
	if (rdma_resolve_route(c->id, 2000) ||
	    expect_event(c->ec, RDMA_CM_EVENT_ROUTE_RESOLVED, 3000))
		return -1;
	return 0;
}

/* A full client connection to the module's listener. */
static int connect_full(struct conn *c, const char *addr, int port)
{
	struct rdma_conn_param p = { .responder_resources = 16, .initiator_depth = 16,
				     .retry_count = 7, .rnr_retry_count = 7 };

	memset(c, 0, sizeof(*c));
	struct rdma_cm_event *ev;
	int got;

	if (resolve(c, addr, port) || setup_qp(c) || rdma_connect(c->id, &p))
		return -1;
	got = next_event(c->ec, 5000, &ev);
	if (got < 0)
		return -ETIMEDOUT;
	/* The server's challenge travels in its accept's private data. */
	if (got == RDMA_CM_EVENT_ESTABLISHED && ev->param.conn.private_data &&
	    ev->param.conn.private_data_len >= ACCEPT_DATA_LEN &&
	    get32(ev->param.conn.private_data) == CHALLENGE_MAGIC)
		memcpy(c->challenge, (const uint8_t *)ev->param.conn.private_data + 4, 16);
	rdma_ack_cm_event(ev);
	return got == RDMA_CM_EVENT_ESTABLISHED ? 0 : -got - 1000;
}

/* Polls one completion (bounded); receives that are not awaited are kept. */
static int poll_one(struct conn *c, struct ibv_wc *wc, int timeout_ms)
{
	uint64_t end = now_ms() + timeout_ms;

	while (now_ms() < end) {
		int n = ibv_poll_cq(c->cq, 1, wc);

		if (n < 0)
			return -1;
		if (n == 1)
			return 0;
		usleep(200);
	}
	return -ETIMEDOUT;
}

static int send_msg(struct conn *c, const uint8_t *msg, size_t len)
{
	struct ibv_sge sge = { (uintptr_t)send_buf(c), (uint32_t)len, c->mr->lkey };
	struct ibv_send_wr wr = { .wr_id = 1000, .sg_list = &sge, .num_sge = 1,
				  .opcode = IBV_WR_SEND }, *bad;
	struct ibv_wc wc;

	if (msg != send_buf(c))
		memcpy(send_buf(c), msg, len);
	if (ibv_post_send(c->id->qp, &wr, &bad))
		return -1;
	for (;;) {
		if (poll_one(c, &wc, 5000))
			return -ETIMEDOUT;
		if (wc.opcode & IBV_WC_RECV) {
			if (wc.status == IBV_WC_SUCCESS) {
				c->pending_slot = wc.wr_id;
				c->pending_len = wc.byte_len;
			}
			continue;
		}
		return wc.status == IBV_WC_SUCCESS ? 0 : -EIO;
	}
}

/* The next received message (bounded wait); returns its slot, length in *len. */
static int recv_msg(struct conn *c, int *len, int timeout_ms)
{
	struct ibv_wc wc;

	if (c->pending_slot >= 0) {
		int s = c->pending_slot;

		c->pending_slot = -1;
		*len = c->pending_len;
		return s;
	}
	for (;;) {
		if (poll_one(c, &wc, timeout_ms))
			return -ETIMEDOUT;
		if (!(wc.opcode & IBV_WC_RECV))
			continue;
		if (wc.status != IBV_WC_SUCCESS)
			return -EIO;
		*len = wc.byte_len;
		return wc.wr_id;
	}
}

/* One READ of a page at (raddr, rkey); returns the work completion status. */
static int read_page(struct conn *c, uint64_t raddr, uint32_t rkey)
{
	struct ibv_sge sge = { (uintptr_t)read_buf(c), PAGE, c->mr->lkey };
	struct ibv_send_wr wr = { .wr_id = 2000, .sg_list = &sge, .num_sge = 1,
				  .opcode = IBV_WR_RDMA_READ }, *bad;
	struct ibv_wc wc;

	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	if (ibv_post_send(c->id->qp, &wr, &bad))
		return -1;
	for (;;) {
		if (poll_one(c, &wc, 5000))
			return -ETIMEDOUT;
		if (wc.wr_id == 2000)
			return wc.status;
	}
}

static void parse_secret(const char *hex, uint8_t secret[16])
{
	for (int i = 0; i < 16; i++) {
		unsigned v = 0;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			v = 0;
		secret[i] = v;
	}
}

/* Sends an open with the proof of `secret` for the connection's challenge; returns the
 * reply's status (0 with *rkey and *base, the remote address of the region's first
 * byte, set), or an error < -1000. */
static int open_region(struct conn *c, uint64_t id, const uint8_t secret[16], uint32_t *rkey,
		       uint64_t *base)
{
	uint8_t proof[16];

	uint8_t m[HDR_LEN + 24];
	uint64_t seq = c->seq++;
	int len, slot, status;
	uint8_t *r;

	header(m, K_OPEN, seq, 0, 24);
	put64(m + HDR_LEN, id);
	open_proof(secret, c->challenge, id, proof);
	memcpy(m + HDR_LEN + 8, proof, 16);
	if (send_msg(c, m, sizeof(m)))
		return -1001;
	slot = recv_msg(c, &len, 5000);
	if (slot < 0)
		return -1002;
	r = recv_buf(c, slot);
	if (len < HDR_LEN || get32(r) != WIRE_MAGIC || get64(r + 8) != seq)
		status = -1003;
	else
		status = (int32_t)get32(r + 16);
	/* size, chunk_bytes, iova_base, packed_iova_base, info, status, desc_mac[16],
	 * lead_pages, n_keys, n_runs, n_hot, packed_pages, n_packed_keys, keys */
	if (status == 0 && len >= HDR_LEN + REPLY_FIXED + 4) {
		*base = get64(r + HDR_LEN + 16);
		*rkey = get32(r + HDR_LEN + REPLY_FIXED);
	}
	post_recv(c, slot);
	return status;
}

static int mode_flood(const char *addr, int port, int n, int hold_ms)
{
	struct conn *cs = calloc(n, sizeof(*cs));
	int answered = 0, refused = 0, other = 0;

	for (int i = 0; i < n; i++) {
		struct rdma_conn_param p = { .responder_resources = 1, .initiator_depth = 1,
					     .retry_count = 1, .rnr_retry_count = 1,
					     /* Distinct per process: the CM rejects a
					      * REQ whose remote QPN it already knows. */
					     .qp_num = ((getpid() & 0xffff) << 8 | i) & 0xffffff };
		struct rdma_cm_event *ev;
		int e;

		if (resolve(&cs[i], addr, port) || rdma_connect(cs[i].id, &p)) {
			other++;
			continue;
		}
		/* No QP: the module's REP comes back as CONNECT_RESPONSE and we never
		 * send the RTU (rdma_establish), leaving the module's side half-open. */
		e = next_event(cs[i].ec, 5000, &ev);
		if (e >= 0)
			rdma_ack_cm_event(ev);
		if (e == RDMA_CM_EVENT_CONNECT_RESPONSE)
			answered++;
		else if (e == RDMA_CM_EVENT_REJECTED)
			refused++;
		else
			other++;
	}
	usleep(hold_ms * 1000);
	printf("hostile-peer: RESULT flood=%d answered=%d refused=%d other=%d\n", n, answered,
	       refused, other);
	for (int i = 0; i < n; i++)
		if (cs[i].id)
			rdma_destroy_id(cs[i].id);
	return answered + refused == n ? 0 : 1;
}

static int mode_garbage(const char *addr, int port, uint64_t id, const char *hex, int tries)
{
	struct conn c;
	uint8_t secret[16], wrong[16], m[MSG_SIZE];
	int eacces = 0, unknown_eacces, sent = 0, dummy, ok = 1, badmsg_replies = 0;
	uint32_t rkey = 0, rkey2 = 0;
	uint64_t base = 0, base2 = 0;
	int read_ok, guessed, shared, wrong_addr;

	parse_secret(hex, secret);
	if (connect_full(&c, addr, port)) {
		printf("hostile-peer: RESULT garbage connect-failed\n");
		return 1;
	}
	/* Malformed messages: each must be dropped without an answer. */
	srand(getpid());
	for (int i = 0; i < MSG_SIZE; i++)
		m[i] = rand();
	sent += !send_msg(&c, m, 1);			/* truncated header */
	sent += !send_msg(&c, m, MSG_SIZE);		/* noise, full size */
	header(m, K_OPEN, 7, 0, 24);
	put32(m, 0xdeadbeef);
	sent += !send_msg(&c, m, HDR_LEN + 24);		/* bad magic */
	header(m, 99, 7, 0, 0);
	sent += !send_msg(&c, m, HDR_LEN);		/* unknown kind */
	header(m, K_OPEN, 7, 0, 4000);
	sent += !send_msg(&c, m, HDR_LEN + 24);		/* body length beyond the message */
	header(m, K_OPEN, 7, 0, 3);
	sent += !send_msg(&c, m, HDR_LEN + 3);		/* open with a short body */
	header(m, K_OPEN_REPLY, 7, 0, 0);
	sent += !send_msg(&c, m, HDR_LEN);		/* a reply nobody asked for */
	header(m, K_CLOSE, 7, 0, 8);
	put64(m + HDR_LEN, 0xffffffffffffull);
	sent += !send_msg(&c, m, HDR_LEN + 8);		/* close of nothing */
	header(m, K_WORKING_SET, 7, 0, 16 + 12);
	put64(m + HDR_LEN, id);
	put32(m + HDR_LEN + 8, 1);
	put32(m + HDR_LEN + 12, 0);
	put64(m + HDR_LEN + 16, 0);
	put32(m + HDR_LEN + 24, 4);
	sent += !send_msg(&c, m, HDR_LEN + 28);		/* working set of a region not opened here */
	header(m, K_WORKING_SET, 7, 0, 16 + 24);
	put32(m + HDR_LEN + 8, 2);
	put64(m + HDR_LEN + 28, 2);			/* second run inside the first */
	put32(m + HDR_LEN + 36, 1);
	sent += !send_msg(&c, m, HDR_LEN + 40);		/* overlapping runs */
	header(m, K_WORKING_SET, 7, 0, 16);
	put32(m + HDR_LEN + 8, 0);
	put32(m + HDR_LEN + 12, 0xffff);
	sent += !send_msg(&c, m, HDR_LEN + 16);		/* more first-touch pages than allowed */
	/* Every malformed message is dropped unanswered, except the open with a short
	 * body: its header is well formed, so it gets an EBADMSG reply. */
	for (int answers = 0, s; (s = recv_msg(&c, &dummy, 500)) >= 0; answers++) {
		uint8_t *r = recv_buf(&c, s);
		int badmsg = dummy >= HDR_LEN && get32(r) == WIRE_MAGIC && get64(r + 8) == 7 &&
			     (int32_t)get32(r + 16) == -EBADMSG;

		post_recv(&c, s);
		if (!badmsg || answers > 0) {
			printf("hostile-peer: the module answered a malformed message\n");
			ok = 0;
		}
		badmsg_replies += badmsg;
	}
	/* Wrong secrets, then an unknown id. */
	for (int i = 0; i < tries; i++) {
		memcpy(wrong, secret, 16);
		wrong[i % 16] ^= 1 + (i & 0x7f);
		eacces += open_region(&c, id, wrong, &rkey, &base) == -EACCES;
	}
	unknown_eacces = open_region(&c, id + 1000000, secret, &rkey, &base) == -EACCES;
	/* The right secret: the key works at the reply's address; a guessed key is refused
	 * by the device (and the QP goes to the error state: one guess per connection). */
	read_ok = open_region(&c, id, secret, &rkey, &base) == 0 &&
		  read_page(&c, base, rkey) == IBV_WC_SUCCESS;
	guessed = read_page(&c, base, rkey ^ 0x5a5a00) != IBV_WC_SUCCESS;
	conn_free(&c);
	/* A second open (another connection) gets the same registration, and the right
	 * key at an address outside the region's range (region offset 0, as before wire
	 * version 8) is refused. */
	shared = wrong_addr = 0;
	if (connect_full(&c, addr, port) == 0 && open_region(&c, id, secret, &rkey2, &base2) == 0) {
		shared = rkey2 == rkey && base2 == base && base != 0;
		wrong_addr = read_page(&c, base ^ (1ull << 40), rkey2) != IBV_WC_SUCCESS;
	}
	conn_free(&c);
	printf("hostile-peer: RESULT garbage_sent=%d badmsg_replies=%d wrong_secret_eacces=%d/%d "
	       "unknown_eacces=%d read_ok=%d guessed_key_refused=%d shared_keys=%d "
	       "wrong_address_refused=%d\n",
	       sent, badmsg_replies, eacces, tries, unknown_eacces, read_ok, guessed, shared, wrong_addr);
	return !(ok && sent == 11 && badmsg_replies == 1 && eacces == tries && unknown_eacces && read_ok &&
		 guessed && shared && wrong_addr);
}

/* Serves FILE as every region, one connection at a time, until killed. */
static __attribute__((noreturn)) void mode_serve(int port, const char *path, const char *hex,
						 int silent, int lying_ws, const char *packed_path,
						 int packed_short)
{
	uint8_t secret[16], desc_mac[16], accept_data[ACCEPT_DATA_LEN];

	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct rdma_event_channel *ec = rdma_create_event_channel();
	struct rdma_cm_id *listen_id;
	uint8_t *file, *packed = NULL;
	size_t len, size, packed_size = 0;
	uint32_t info;
	struct stat st;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st))
		die(path);
	len = st.st_size;
	size = (len + PAGE - 1) / PAGE * PAGE;
	file = aligned_alloc(PAGE, size);
	if (!file || read(fd, file, len) != (ssize_t)len)
		die("read");
	memset(file + len, 0, size - len);
	close(fd);
	info = get32(file + 8); /* the descriptor's length, from its header */
	if (packed_path) {
		fd = open(packed_path, O_RDONLY);
		if (fd < 0 || fstat(fd, &st))
			die(packed_path);
		packed_size = ((size_t)st.st_size + PAGE - 1) / PAGE * PAGE;
		/* One key covers the copy: chunk_bytes is the region's size. */
		if (!packed_size || packed_size > size)
			die("packed copy larger than the region");
		packed = aligned_alloc(PAGE, packed_size);
		if (!packed || read(fd, packed, st.st_size) != (ssize_t)st.st_size)
			die("read packed copy");
		memset(packed + st.st_size, 0, packed_size - st.st_size);
		close(fd);
	}
	/* The copy's pages as replies announce them: a short copy claims four times
	 * what it registered (at most the region's size). */
	size_t announced = !packed_short ? packed_size : 4 * packed_size <= size ? 4 * packed_size : size;
	if (info > len)
		die("descriptor length");
	/* A parent knows its snapshot's secret: the descriptor's MAC is right (unless
	 * the secret given here is not the handle's). */
	parse_secret(hex, secret);
	siphash128(secret, (const uint8_t *)"mitosis-desc-v1", 16, file, info, desc_mac);
	if (!ec || rdma_create_id(ec, &listen_id, NULL, RDMA_PS_TCP) ||
	    rdma_bind_addr(listen_id, (struct sockaddr *)&sa) || rdma_listen(listen_id, 8))
		die("listen");
	printf("hostile-peer: serving %zu bytes (descriptor %u) on port %d%s\n", size, info, port,
	       silent ? ", never answering" : lying_ws ? ", with a lying working set" :
	       packed ? ", granting a packed copy" : "");
	fflush(stdout);
	for (;;) {
		struct rdma_cm_event *ev;
		struct conn c = { 0 };
		struct ibv_mr *data, *packed_mr = NULL;
		struct rdma_conn_param p = { .retry_count = 7, .rnr_retry_count = 7 };
		int served = 0;

		int e = next_event(ec, -1, &ev);

		if (e < 0)
			continue;
		if (e != RDMA_CM_EVENT_CONNECT_REQUEST) {
			rdma_ack_cm_event(ev);
			continue;
		}
		c.id = ev->id;
		p.responder_resources = ev->param.conn.initiator_depth;
		p.initiator_depth = ev->param.conn.responder_resources;
		rdma_ack_cm_event(ev);
		if (setup_qp(&c)) {
			rdma_reject(c.id, NULL, 0);
			continue;
		}
		/* I/O addresses from the bases the reply gives (as the module's). */
		data = ibv_reg_mr_iova(c.pd, file, size, SERVE_BASE, IBV_ACCESS_REMOTE_READ);
		if (packed) {
			packed_mr = ibv_reg_mr_iova(c.pd, packed, packed_size, SERVE_PACKED_BASE,
						    IBV_ACCESS_REMOTE_READ);
			if (!packed_mr)
				die("register packed copy");
		}
		/* A challenge the module requires; this parent never checks the proofs. */
		put32(accept_data, CHALLENGE_MAGIC);
		for (int i = 0; i < 16; i++)
			accept_data[4 + i] = rand();
		p.private_data = accept_data;
		p.private_data_len = sizeof(accept_data);
		if (!data || rdma_accept(c.id, &p))
			die("accept");
		/* Serve until the connection goes (its events share the channel). */
		fcntl(ec->fd, F_SETFL, O_NONBLOCK);
		for (;;) {
			int l = 0, s = recv_msg(&c, &l, 20);
			uint8_t *r, *out;

			if (next_event(ec, 0, &ev) >= 0) {
				int e = ev->event;

				rdma_ack_cm_event(ev);
				if (e == RDMA_CM_EVENT_DISCONNECTED || e == RDMA_CM_EVENT_TIMEWAIT_EXIT)
					break;
			}
			if (s < 0)
				continue;
			r = recv_buf(&c, s);
			if (!silent && l >= HDR_LEN && get32(r) == WIRE_MAGIC && (get32(r + 4) >> 16) == K_OPEN) {
				out = send_buf(&c);
				size_t keys = 4 * (1 + !!packed_mr);
				size_t body = REPLY_FIXED + keys + (lying_ws ? 3 * 12 + 2 * 12 : 0);
				uint32_t desc_pages = (uint32_t)((info + 4095) / 4096);
				uint8_t *f = out + HDR_LEN, *after = f + REPLY_FIXED + keys;

				header(out, K_OPEN_REPLY, get64(r + 8), 0, body);
				put64(f, size);
				put64(f + 8, size);
				put64(f + 16, SERVE_BASE);
				put64(f + 24, packed_mr ? SERVE_PACKED_BASE : 0);
				put64(f + 32, info);
				put64(f + 40, 0); /* status word: never skip the open */
				memcpy(f + 48, desc_mac, 16);
				put32(f + 64, 0); /* no lead pages announced */
				put32(f + 68, 1);
				put32(f + 72, lying_ws ? 2 : 0); /* working-set runs */
				put32(f + 76, lying_ws ? 3 : 0); /* first-touch pages */
				put32(f + 80, (uint32_t)(announced / PAGE));
				put32(f + 84, !!packed_mr); /* packed copy's keys */
				put32(f + REPLY_FIXED, data->rkey);
				if (packed_mr)
					put32(f + REPLY_FIXED + 4, packed_mr->rkey);
				if (lying_ws) {
					/* First-touch pages: page 0 at the descriptor's
					 * page, page 0 past the region, and a page of VMA
					 * 60000 (which it does not have) at the first data
					 * page: none may be read into the child. */
					put64(after, 0);
					put32(after + 8, 0);
					put64(after + 12, 0);
					put32(after + 20, 0xffffffffu);
					put64(after + 24, 60000ull << 35);
					put32(after + 32, desc_pages);
					/* Pages 0-32767 (most are no page of the snapshot:
					 * windows hold a VMA each), and a run in the window
					 * of VMA 60000, which it does not have. */
					put64(after + 36, 0);
					put32(after + 44, 32767);
					put64(after + 48, 60000ull << 35);
					put32(after + 56, 1);
				}
				send_msg(&c, out, HDR_LEN + body);
				served++;
			}
			post_recv(&c, s);
		}
		printf("hostile-peer: connection closed after %d opens\n", served);
		fflush(stdout);
		ibv_dereg_mr(data);
		if (packed_mr)
			ibv_dereg_mr(packed_mr);
		c.ec = NULL; /* the listener's */
		conn_free(&c);
		fcntl(ec->fd, F_SETFL, 0);
	}
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 6 && !strcmp(argv[1], "flood"))
		return mode_flood(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
	if (argc == 7 && !strcmp(argv[1], "garbage"))
		return mode_garbage(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 0), argv[5],
				    atoi(argv[6]));
	if ((argc == 5 || argc == 6) && !strcmp(argv[1], "serve"))
		mode_serve(atoi(argv[2]), argv[3], argv[4], argc == 6 && !strcmp(argv[5], "silent"),
			   argc == 6 && !strcmp(argv[5], "lying-ws"),
			   argc == 6 && !strncmp(argv[5], "packed=", 7) ? argv[5] + 7 :
			   argc == 6 && !strncmp(argv[5], "packed-short=", 13) ? argv[5] + 13 : NULL,
			   argc == 6 && !strncmp(argv[5], "packed-short=", 13));
	fprintf(stderr, "usage: hostile-peer flood ADDR PORT N HOLD_MS | garbage ADDR PORT ID "
			"SECRET_HEX TRIES | serve PORT FILE SECRET_HEX "
			"[silent|lying-ws|packed=COPY|packed-short=COPY]\n");
	return 2;
}
