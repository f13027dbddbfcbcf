// SPDX-License-Identifier: GPL-2.0
/*
 * One-line wrappers of static inline functions and macros, and the module parameters.
 * Everything else is Rust (src/, rdma/).
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include "helpers.h"

unsigned short mitosis_param_listen_port = 18515;
module_param_named(listen_port, mitosis_param_listen_port, ushort, 0444);
MODULE_PARM_DESC(listen_port, "TCP-space port of the RDMA CM control listener (0: do not listen)");

char *mitosis_param_device = "";
module_param_named(device, mitosis_param_device, charp, 0444);
MODULE_PARM_DESC(device, "Use only the RDMA device of this name (empty: any device)");

unsigned int mitosis_param_connect_timeout_ms = 3000;
module_param_named(connect_timeout_ms, mitosis_param_connect_timeout_ms, uint, 0644);
MODULE_PARM_DESC(connect_timeout_ms, "Default bound on connection setup, in ms");

unsigned int mitosis_param_io_timeout_ms = 3000;
module_param_named(io_timeout_ms, mitosis_param_io_timeout_ms, uint, 0644);
MODULE_PARM_DESC(io_timeout_ms, "Bound on one control RPC or READ batch, in ms");

int mitosis_ib_post_send(struct ib_qp *qp, const struct ib_send_wr *wr,
			 const struct ib_send_wr **bad_wr)
{ return ib_post_send(qp, wr, bad_wr); }

int mitosis_ib_post_recv(struct ib_qp *qp, const struct ib_recv_wr *wr,
			 const struct ib_recv_wr **bad_wr)
{ return ib_post_recv(qp, wr, bad_wr); }

u64 mitosis_ib_dma_map_page(struct ib_device *dev, struct page *page,
			    enum dma_data_direction dir)
{ return ib_dma_map_page(dev, page, 0, PAGE_SIZE, dir); }

void mitosis_ib_dma_unmap_page(struct ib_device *dev, u64 addr,
			       enum dma_data_direction dir)
{ ib_dma_unmap_page(dev, addr, PAGE_SIZE, dir); }

int mitosis_ib_dma_mapping_error(struct ib_device *dev, u64 addr)
{ return ib_dma_mapping_error(dev, addr); }

void mitosis_ib_dma_sync_for_cpu(struct ib_device *dev, u64 addr,
				 enum dma_data_direction dir)
{ ib_dma_sync_single_for_cpu(dev, addr, PAGE_SIZE, dir); }

void mitosis_ib_dma_sync_for_device(struct ib_device *dev, u64 addr,
				    enum dma_data_direction dir)
{ ib_dma_sync_single_for_device(dev, addr, PAGE_SIZE, dir); }

int mitosis_ib_dma_map_sg(struct ib_device *dev, struct scatterlist *sg,
			  int nents, enum dma_data_direction dir)
{ return ib_dma_map_sg(dev, sg, nents, dir); }

void mitosis_ib_dma_unmap_sg(struct ib_device *dev, struct scatterlist *sg,
			     int nents, enum dma_data_direction dir)
{ ib_dma_unmap_sg(dev, sg, nents, dir); }

int mitosis_ib_dereg_mr(struct ib_mr *mr)
{ return ib_dereg_mr(mr); }

void mitosis_ib_dealloc_pd(struct ib_pd *pd)
{ ib_dealloc_pd(pd); }

void mitosis_ib_update_fast_reg_key(struct ib_mr *mr)
{ ib_update_fast_reg_key(mr, ib_inc_rkey(mr->rkey)); }

void mitosis_sg_set_page(struct scatterlist *sg, struct page *page)
{ sg_set_page(sg, page, PAGE_SIZE, 0); }

void *mitosis_page_address(struct page *page)
{ return page_address(page); }

void mitosis_init_completion(struct completion *c)
{ init_completion(c); }

void mitosis_reinit_completion(struct completion *c)
{ reinit_completion(c); }

void mitosis_init_work(struct work_struct *work, work_func_t fn)
{ INIT_WORK(work, fn); }

bool mitosis_queue_work(struct workqueue_struct *wq, struct work_struct *work)
{ return queue_work(wq, work); }
