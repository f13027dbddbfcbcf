/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One-line C wrappers of static inline functions and macros that Rust cannot call,
 * and the module parameters (module_param is a macro). No logic lives here.
 */
#ifndef MITOSIS_HELPERS_H
#define MITOSIS_HELPERS_H

#include <linux/completion.h>
#include <linux/scatterlist.h>
#include <linux/workqueue.h>
#include <rdma/ib_verbs.h>

extern unsigned short mitosis_param_listen_port;
extern char *mitosis_param_device;
extern unsigned int mitosis_param_connect_timeout_ms;
extern unsigned int mitosis_param_io_timeout_ms;

int mitosis_ib_post_send(struct ib_qp *qp, const struct ib_send_wr *wr,
			 const struct ib_send_wr **bad_wr);
int mitosis_ib_post_recv(struct ib_qp *qp, const struct ib_recv_wr *wr,
			 const struct ib_recv_wr **bad_wr);
u64 mitosis_ib_dma_map_page(struct ib_device *dev, struct page *page,
			    enum dma_data_direction dir);
void mitosis_ib_dma_unmap_page(struct ib_device *dev, u64 addr,
			       enum dma_data_direction dir);
int mitosis_ib_dma_mapping_error(struct ib_device *dev, u64 addr);
void mitosis_ib_dma_sync_for_cpu(struct ib_device *dev, u64 addr,
				 enum dma_data_direction dir);
void mitosis_ib_dma_sync_for_device(struct ib_device *dev, u64 addr,
				    enum dma_data_direction dir);
int mitosis_ib_dma_map_sg(struct ib_device *dev, struct scatterlist *sg,
			  int nents, enum dma_data_direction dir);
void mitosis_ib_dma_unmap_sg(struct ib_device *dev, struct scatterlist *sg,
			     int nents, enum dma_data_direction dir);
int mitosis_ib_dereg_mr(struct ib_mr *mr);
void mitosis_ib_dealloc_pd(struct ib_pd *pd);
void mitosis_ib_update_fast_reg_key(struct ib_mr *mr);
void mitosis_sg_set_page(struct scatterlist *sg, struct page *page);
void *mitosis_page_address(struct page *page);
void mitosis_init_completion(struct completion *c);
void mitosis_reinit_completion(struct completion *c);
void mitosis_init_work(struct work_struct *work, work_func_t fn);
bool mitosis_queue_work(struct workqueue_struct *wq, struct work_struct *work);

#endif
