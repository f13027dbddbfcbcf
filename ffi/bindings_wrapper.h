/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Headers the module's own bindings are generated from (scripts/gen-bindings.sh runs
 * bindgen on this file with the flags the kernel used for its own bindings).
 */
#include <linux/completion.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/in.h>
#include <linux/inet.h>
#include <linux/lzo.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/pagemap.h>
#include <linux/pseudo_fs.h>
#include <linux/fs_context.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/signal.h>
#include <linux/mount.h>
#include <linux/file.h>
#include <asm/fpu/api.h>
#include <asm/fpu/types.h>
#include <linux/random.h>
#include <linux/scatterlist.h>
#include <linux/workqueue.h>
#include <rdma/ib_verbs.h>
#include <rdma/rdma_cm.h>

#include "helpers.h"
