/* SPDX-License-Identifier: GPL-2.0 */
/*
 * One-line C wrappers of static inline functions and macros that Rust cannot call,
 * and the module parameters (module_param is a macro). No logic lives here.
 */
#ifndef MITOSIS_HELPERS_H
#define MITOSIS_HELPERS_H

#include <linux/completion.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/pagemap.h>
#include <linux/sched.h>
#include <linux/scatterlist.h>
#include <linux/workqueue.h>
#include <rdma/ib_verbs.h>

extern unsigned short mitosis_param_listen_port;
extern char *mitosis_param_device;
extern unsigned int mitosis_param_connect_timeout_ms;
extern unsigned int mitosis_param_io_timeout_ms;
extern unsigned int mitosis_param_prefetch_pages;
extern bool mitosis_param_unprivileged_children;
extern bool mitosis_param_pin_pages;
extern bool mitosis_param_local_files;
extern unsigned int mitosis_param_working_set;
extern bool mitosis_param_lead_pages;
extern bool mitosis_param_reuse_open;
extern bool mitosis_param_replay_async;
extern unsigned int mitosis_param_open_linger_ms;
extern unsigned int mitosis_param_read_pages_per_wr;
extern unsigned int mitosis_param_read_batches;
extern unsigned int mitosis_param_readahead_windows;
extern unsigned int mitosis_param_first_touch_pages;

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
void mitosis_sg_set_pages(struct scatterlist *sg, struct page *page, unsigned int n);
void *mitosis_page_address(struct page *page);
void mitosis_init_completion(struct completion *c);
void mitosis_reinit_completion(struct completion *c);

struct page *mitosis_alloc_zeroed_page(void);
struct page *mitosis_alloc_page_copy(struct page *src);
void mitosis_copy_page(void *to, const void *from);
size_t mitosis_lzo1x_1_mem_compress(void);
bool mitosis_page_anon(struct page *page);
void mitosis_get_page(struct page *page);
void mitosis_put_page(struct page *page);
void mitosis_put_page_refs(struct page *page, int refs);
unsigned long mitosis_folio_pages_from(struct page *page);
struct page *mitosis_folio_page(struct folio *folio);
void mitosis_folio_mark_uptodate(struct folio *folio);
bool mitosis_folio_test_uptodate(struct folio *folio);
void mitosis_folio_zero(struct folio *folio);
void mitosis_folio_put(struct folio *folio);
struct folio *mitosis_readahead_folio(struct readahead_control *rac);
struct folio *mitosis_grab_folio(struct address_space *mapping, pgoff_t index);
struct folio *mitosis_grab_folio_nowait(struct address_space *mapping, pgoff_t index);
struct address_space *mitosis_folio_mapping(struct folio *folio);
struct folio *mitosis_page_folio(struct page *page);
bool mitosis_folio_test_checked(struct folio *folio);
void mitosis_folio_set_checked(struct folio *folio);
bool mitosis_folio_test_clear_readahead(struct folio *folio);
void mitosis_folio_set_readahead(struct folio *folio);
bool mitosis_fault_locked(vm_fault_t ret);
void mitosis_i_size_write(struct inode *inode, loff_t size);
bool mitosis_try_module_get(struct module *mod);
void mitosis_module_put(struct module *mod);
void mitosis_mmap_read_lock(struct mm_struct *mm);
void mitosis_mmap_read_unlock(struct mm_struct *mm);
int mitosis_mmap_write_lock_killable(struct mm_struct *mm);
void mitosis_mmap_write_unlock(struct mm_struct *mm);
void mitosis_mm_arg_lock(struct mm_struct *mm);
void mitosis_mm_arg_unlock(struct mm_struct *mm);
struct pt_regs *mitosis_current_pt_regs(void);
struct mm_struct *mitosis_current_mm(void);
/* The per-thread user pointers and signal mask the kernel keeps for a task. */
struct mitosis_user_state {
	u64 rseq, rseq_len, rseq_sig;
	u64 robust_list, clear_child_tid, set_child_tid;
	u64 sas_ss_sp, sas_ss_size, sas_ss_flags;
	u64 blocked;
};
void mitosis_get_task_user_state(struct mitosis_user_state *s);
void mitosis_set_task_user_state(const struct mitosis_user_state *s);
struct k_sigaction *mitosis_sigactions(void);
void mitosis_sighand_lock_current(void);
void mitosis_sighand_unlock_current(void);
bool mitosis_current_euid_is_root(void);
bool mitosis_current_caps_clear(void);
bool mitosis_current_no_new_privs(void);
pid_t mitosis_current_tid(void);
struct fpstate *mitosis_current_fpstate(void);
unsigned long mitosis_read_fsbase(void);
unsigned long mitosis_read_gsbase(void);
void mitosis_write_fsgsbase(unsigned long fsbase, unsigned long gsbase);

pgoff_t mitosis_folio_index(struct folio *folio);
struct inode *mitosis_folio_inode(struct folio *folio);


pid_t mitosis_current_tgid(void);
pid_t mitosis_current_parent_tgid(void);

bool mitosis_current_mm_exclusive(void);

/* Page-table probes: capture skips never-populated ranges of anonymous memory
 * (src/page_table.rs). */
void mitosis_rcu_read_lock(void);
void mitosis_rcu_read_unlock(void);
pgd_t *mitosis_pgd_offset(struct mm_struct *mm, unsigned long addr);
bool mitosis_pgd_none(pgd_t *pgd);
unsigned long mitosis_pgd_addr_end(unsigned long addr, unsigned long end);
p4d_t *mitosis_p4d_offset(pgd_t *pgd, unsigned long addr);
bool mitosis_p4d_none(p4d_t *p4d);
unsigned long mitosis_p4d_addr_end(unsigned long addr, unsigned long end);
pud_t *mitosis_pud_offset(p4d_t *p4d, unsigned long addr);
bool mitosis_pud_none(pud_t *pud);
bool mitosis_pud_leaf(pud_t *pud);
unsigned long mitosis_pud_addr_end(unsigned long addr, unsigned long end);
pmd_t *mitosis_pmd_offset(pud_t *pud, unsigned long addr);
pmd_t mitosis_pmdp_get_lockless(pmd_t *pmd);
bool mitosis_pmd_none(pmd_t pmd);
bool mitosis_pmd_table(pmd_t pmd);
struct page *mitosis_pmd_huge_page(pmd_t pmd);
unsigned long mitosis_pmd_addr_end(unsigned long addr, unsigned long end);
pte_t *mitosis_pte_offset_kernel(pmd_t *pmd, unsigned long addr);
bool mitosis_pte_none(pte_t *pte);


void mitosis_init_delayed_work(struct delayed_work *dw, work_func_t fn);
bool mitosis_queue_delayed_work(struct delayed_work *dw, unsigned long delay);
extern unsigned int mitosis_param_keep_ms;

void mitosis_get_file(struct file *f);
long mitosis_file_count(struct file *f);
bool mitosis_file_is_regular(struct file *f);
bool mitosis_file_unlinked(struct file *f);
loff_t mitosis_file_size(struct file *f);
time64_t mitosis_file_mtime_sec(struct file *f);
char *mitosis_file_path(struct file *f, char *buf, int len);

#endif
