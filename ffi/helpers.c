// SPDX-License-Identifier: GPL-2.0
/*
 * One-line wrappers of static inline functions and macros, and the module parameters.
 * Everything else is Rust (src/, rdma/).
 */
#include <linux/module.h>
#include <linux/mmap_lock.h>
#include <linux/pagemap.h>
#include <linux/rseq.h>
#include <linux/sched/signal.h>
#include <linux/uaccess.h>
#include <linux/cred.h>
#include <linux/capability.h>
#include <asm/fsgsbase.h>
#include <asm/msr.h>
#include <asm/segment.h>
#include <linux/moduleparam.h>
#include <linux/lzo.h>
#include <linux/random.h>
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
{ ib_update_fast_reg_key(mr, (u8)(mr->rkey + 1 + get_random_u32_below(255))); }

void mitosis_sg_set_pages(struct scatterlist *sg, struct page *page, unsigned int n)
{ sg_set_page(sg, page, n * PAGE_SIZE, 0); }

void *mitosis_page_address(struct page *page)
{ return page_address(page); }

void mitosis_init_completion(struct completion *c)
{ init_completion(c); }

void mitosis_reinit_completion(struct completion *c)
{ reinit_completion(c); }

bool mitosis_param_unprivileged_children;
module_param_named(unprivileged_children, mitosis_param_unprivileged_children, bool, 0644);
MODULE_PARM_DESC(unprivileged_children, "Resume only callers without privilege: not root, no effective capability, no_new_privs set (multi-tenant hosts)");

unsigned int mitosis_param_prefetch_pages = 64;
module_param_named(prefetch_pages, mitosis_param_prefetch_pages, uint, 0644);
MODULE_PARM_DESC(prefetch_pages, "Most snapshot pages one remote fault reads: the window starts at 1 page, doubles while faults come in sequence and drops to 1 on any other fault (at most 64; 0 or 1: only the faulting page)");

unsigned int mitosis_param_readahead_windows = 4;
module_param_named(readahead_windows, mitosis_param_readahead_windows, uint, 0644);
MODULE_PARM_DESC(readahead_windows, "Windows of prefetch_pages pages read ahead, in the background, of a child reading a VMA in sequence once its fault window reached prefetch_pages; the first access to each window reads the next (0-4, default 4; 0: none, the child waits for every window)");

bool mitosis_param_pin_pages;
module_param_named(pin_pages, mitosis_param_pin_pages, bool, 0644);
MODULE_PARM_DESC(pin_pages, "Hold captured pages with long-term pins (moved out of movable and CMA memory first; every anonymous page the parent shares is copied at prepare) instead of plain references (no copy: the parent's later writes copy)");

bool mitosis_param_local_files = true;
module_param_named(local_files, mitosis_param_local_files, bool, 0644);
MODULE_PARM_DESC(local_files, "Map a seed's clean file mappings from this host's own file when it is the same file (path, size, mtime, first page)");

unsigned int mitosis_param_working_set = 1;
module_param_named(working_set, mitosis_param_working_set, uint, 0644);
MODULE_PARM_DESC(working_set, "Working sets: 0 off; 1 record the pages a snapshot's children on this host fetched, report them to the parent, and prefetch at a resume this host's record or else the parent's; 2 the same, but prefetch only the parent's record (to measure a new host)");

unsigned int mitosis_param_read_pages_per_wr = 16;
module_param_named(read_pages_per_wr, mitosis_param_read_pages_per_wr, uint, 0644);
MODULE_PARM_DESC(read_pages_per_wr, "Most contiguous pages one RDMA READ request carries (1-16, bounded by the device's scatter entries; default 16: fewer requests for the same pages, see docs/benchmarks.md)");

bool mitosis_param_lead_pages = true;
module_param_named(lead_pages, mitosis_param_lead_pages, bool, 0644);
MODULE_PARM_DESC(lead_pages, "Read the pages a child needs first (its stack, the resume point) with the snapshot descriptor, in one batch (0: only the descriptor; they come by demand fault)");

bool mitosis_param_reuse_open = true;
module_param_named(reuse_open, mitosis_param_reuse_open, bool, 0644);
MODULE_PARM_DESC(reuse_open, "Resume a later child of a snapshot through the open an earlier child here left at the parent (open_linger_ms) without asking the parent again, when the snapshot's status page, read in the descriptor's batch, says it is live and unchanged (0: every resume asks the parent)");

bool mitosis_param_replay_async;
module_param_named(replay_async, mitosis_param_replay_async, bool, 0644);
MODULE_PARM_DESC(replay_async, "Prefetch a working set in the background while the child runs (its faults on pages not there yet read them at once) instead of before the resume returns (default 0: under emulation the transfer costs the child's own CPU, see docs/benchmarks.md)");

unsigned int mitosis_param_first_touch_pages = 16;
module_param_named(first_touch_pages, mitosis_param_first_touch_pages, uint, 0644);
MODULE_PARM_DESC(first_touch_pages, "Most pages of a working-set record's first touches a resume reads in its descriptor batch (0-56, room permitting; 0: none; each costs about a quarter of a demand fault in the batch, so the default takes the first 16)");

unsigned int mitosis_param_read_batches = 8;
module_param_named(read_batches, mitosis_param_read_batches, uint, 0644);
MODULE_PARM_DESC(read_batches, "READ batches one connection runs at once (1-8): the faults of several children of a snapshot overlap on the link; a packed working set is read min(this, 4) doorbells deep");

unsigned int mitosis_param_open_linger_ms = 5000;
module_param_named(open_linger_ms, mitosis_param_open_linger_ms, uint, 0644);
MODULE_PARM_DESC(open_linger_ms, "After a snapshot's last child on this host exits, keep its open at the parent this long (the parent keeps its registration for this host, so the next child's open needs no new one; 0: close at once; at most 60000)");

/* Pages, folios, files. */
struct page *mitosis_alloc_zeroed_page(void)
{ return alloc_page(GFP_KERNEL | __GFP_ZERO); }

struct page *mitosis_alloc_page_copy(struct page *src)
{ struct page *p = alloc_page(GFP_KERNEL); if (p) copy_highpage(p, src); return p; }

void mitosis_copy_page(void *to, const void *from)
{ copy_page(to, (void *)from); }

size_t mitosis_lzo1x_1_mem_compress(void)
{ return LZO1X_1_MEM_COMPRESS; }

bool mitosis_page_anon(struct page *page)
{ return PageAnon(page); }

void mitosis_get_page(struct page *page)
{ get_page(page); }

void mitosis_put_page(struct page *page)
{ put_page(page); }

void mitosis_put_page_refs(struct page *page, int refs)
{ folio_put_refs(page_folio(page), refs); }

unsigned long mitosis_folio_pages_from(struct page *page)
{ return folio_nr_pages(page_folio(page)) - folio_page_idx(page_folio(page), page); }

struct page *mitosis_folio_page(struct folio *folio)
{ return &folio->page; }

void mitosis_folio_mark_uptodate(struct folio *folio)
{ folio_mark_uptodate(folio); }

bool mitosis_folio_test_uptodate(struct folio *folio)
{ return folio_test_uptodate(folio); }

void mitosis_folio_zero(struct folio *folio)
{ folio_zero_range(folio, 0, folio_size(folio)); }

void mitosis_folio_put(struct folio *folio)
{ folio_put(folio); }

struct folio *mitosis_readahead_folio(struct readahead_control *rac)
{ return readahead_folio(rac); }

struct folio *mitosis_grab_folio(struct address_space *mapping, pgoff_t index)
{ return filemap_grab_folio(mapping, index); }

void mitosis_i_size_write(struct inode *inode, loff_t size)
{ i_size_write(inode, size); }

bool mitosis_try_module_get(struct module *mod)
{ return try_module_get(mod); }

void mitosis_module_put(struct module *mod)
{ module_put(mod); }

/* Address spaces. */
void mitosis_mmap_read_lock(struct mm_struct *mm)
{ mmap_read_lock(mm); }

void mitosis_mmap_read_unlock(struct mm_struct *mm)
{ mmap_read_unlock(mm); }

int mitosis_mmap_write_lock_killable(struct mm_struct *mm)
{ return mmap_write_lock_killable(mm); }

void mitosis_mmap_write_unlock(struct mm_struct *mm)
{ mmap_write_unlock(mm); }

void mitosis_mm_arg_lock(struct mm_struct *mm)
{ spin_lock(&mm->arg_lock); }

void mitosis_mm_arg_unlock(struct mm_struct *mm)
{ spin_unlock(&mm->arg_lock); }

/* Tasks. */
struct pt_regs *mitosis_current_pt_regs(void)
{ return task_pt_regs(current); }

bool mitosis_current_euid_is_root(void)
{ return uid_eq(current_euid(), GLOBAL_ROOT_UID); }

bool mitosis_current_caps_clear(void)
{ return cap_isclear(current_cred()->cap_effective); }

bool mitosis_current_no_new_privs(void)
{ return task_no_new_privs(current); }

pid_t mitosis_current_tid(void)
{ return task_pid_vnr(current); }

/* x86-64 register state (what arch_prctl(ARCH_SET_FS/GS) does for the current task). */
struct fpstate *mitosis_current_fpstate(void)
{ return current->thread.fpu.fpstate; }

unsigned long mitosis_read_fsbase(void)
{ return x86_fsbase_read_cpu(); }

unsigned long mitosis_read_gsbase(void)
{ unsigned long v; rdmsrl(MSR_KERNEL_GS_BASE, v); return v; }

void mitosis_write_fsgsbase(unsigned long fsbase, unsigned long gsbase)
{
	preempt_disable();
	loadsegment(fs, 0);
	x86_fsbase_write_cpu(fsbase);
	current->thread.fsindex = 0;
	current->thread.fsbase = fsbase;
	wrmsrl(MSR_KERNEL_GS_BASE, gsbase);
	current->thread.gsbase = gsbase;
	preempt_enable();
}

pgoff_t mitosis_folio_index(struct folio *folio)
{ return folio->index; }

struct inode *mitosis_folio_inode(struct folio *folio)
{ return folio_inode(folio); }

struct address_space *mitosis_folio_mapping(struct folio *folio)
{ return folio->mapping; }

struct folio *mitosis_page_folio(struct page *page)
{ return page_folio(page); }

bool mitosis_folio_test_checked(struct folio *folio)
{ return folio_test_checked(folio); }

void mitosis_folio_set_checked(struct folio *folio)
{ folio_set_checked(folio); }

/* Every fault asks: the plain test first, so that an unmarked folio costs no atomic. */
bool mitosis_folio_test_clear_readahead(struct folio *folio)
{ return folio_test_readahead(folio) && folio_test_clear_readahead(folio); }

void mitosis_folio_set_readahead(struct folio *folio)
{ folio_set_readahead(folio); }

bool mitosis_fault_locked(vm_fault_t ret)
{ return ret & VM_FAULT_LOCKED; }

/* A folio for readahead next to a locked one: never waits for another folio's lock. */
struct folio *mitosis_grab_folio_nowait(struct address_space *mapping, pgoff_t index)
{ return __filemap_get_folio(mapping, index, FGP_LOCK | FGP_CREAT | FGP_NOWAIT, readahead_gfp_mask(mapping)); }

/*
 * task_struct fields, in C (bindgen's task_struct is now checked against the
 * compiler's, see ffi/layout.list; the fields stay here, behind the named
 * struct mitosis_user_state, so src/task.rs never touches task_struct).
 */
struct mm_struct *mitosis_current_mm(void)
{ return current->mm; }

void mitosis_get_task_user_state(struct mitosis_user_state *s)
{
	struct task_struct *t = current;

	s->rseq = (u64)t->rseq; s->rseq_len = t->rseq_len; s->rseq_sig = t->rseq_sig;
	s->robust_list = (u64)t->robust_list; s->clear_child_tid = (u64)t->clear_child_tid;
	s->set_child_tid = (u64)t->set_child_tid; s->sas_ss_sp = t->sas_ss_sp;
	s->sas_ss_size = t->sas_ss_size; s->sas_ss_flags = t->sas_ss_flags;
	s->blocked = t->blocked.sig[0];
}

void mitosis_set_task_user_state(const struct mitosis_user_state *s)
{
	struct task_struct *t = current;

	t->rseq = (struct rseq __user *)s->rseq; t->rseq_len = s->rseq_len;
	t->rseq_sig = s->rseq_sig;
	rseq_set_notify_resume(t);
	t->robust_list = (struct robust_list_head __user *)s->robust_list;
	t->clear_child_tid = (int __user *)s->clear_child_tid;
	t->set_child_tid = (int __user *)s->set_child_tid;
	t->sas_ss_sp = s->sas_ss_sp; t->sas_ss_size = s->sas_ss_size;
	t->sas_ss_flags = s->sas_ss_flags;
}

struct k_sigaction *mitosis_sigactions(void)
{ return current->sighand->action; }

void mitosis_sighand_lock_current(void)
{ spin_lock_irq(&current->sighand->siglock); }

void mitosis_sighand_unlock_current(void)
{ spin_unlock_irq(&current->sighand->siglock); }

pid_t mitosis_current_tgid(void)
{ return task_tgid_vnr(current); }

pid_t mitosis_current_parent_tgid(void)
{ return task_ppid_nr_ns(current, task_active_pid_ns(current)); }

/* A captured seed ends here: its exit must not write the captured memory (no
 * clear_child_tid store, no robust-list walk), and SIGKILL is handled before it could
 * run another user instruction. */
/* Whether the current thread is alone in its process and its address space is not
 * shared (vfork, CLONE_VM): only then may capture end it or resume replace the mm. */
bool mitosis_current_mm_exclusive(void)
{ return get_nr_threads(current) == 1 && atomic_read(&current->mm->mm_users) == 1; }

/* Page-table probes (src/page_table.rs). */
void mitosis_rcu_read_lock(void)
{ rcu_read_lock(); }

void mitosis_rcu_read_unlock(void)
{ rcu_read_unlock(); }

pgd_t *mitosis_pgd_offset(struct mm_struct *mm, unsigned long addr)
{ return pgd_offset(mm, addr); }

bool mitosis_pgd_none(pgd_t *pgd)
{ return pgd_none(pgdp_get(pgd)); }

unsigned long mitosis_pgd_addr_end(unsigned long addr, unsigned long end)
{ return pgd_addr_end(addr, end); }

p4d_t *mitosis_p4d_offset(pgd_t *pgd, unsigned long addr)
{ return p4d_offset(pgd, addr); }

bool mitosis_p4d_none(p4d_t *p4d)
{ return p4d_none(p4dp_get(p4d)); }

unsigned long mitosis_p4d_addr_end(unsigned long addr, unsigned long end)
{ return p4d_addr_end(addr, end); }

pud_t *mitosis_pud_offset(p4d_t *p4d, unsigned long addr)
{ return pud_offset(p4d, addr); }

bool mitosis_pud_none(pud_t *pud)
{ return pud_none(pudp_get(pud)); }

bool mitosis_pud_leaf(pud_t *pud)
{ return pud_leaf(pudp_get(pud)); }

unsigned long mitosis_pud_addr_end(unsigned long addr, unsigned long end)
{ return pud_addr_end(addr, end); }

pmd_t *mitosis_pmd_offset(pud_t *pud, unsigned long addr)
{ return pmd_offset(pud, addr); }

pmd_t mitosis_pmdp_get_lockless(pmd_t *pmd)
{ return pmdp_get_lockless(pmd); }

bool mitosis_pmd_none(pmd_t pmd)
{ return pmd_none(pmd); }

/* A present entry pointing to a PTE table (not a huge page, not a migration entry). */
bool mitosis_pmd_table(pmd_t pmd)
{ return pmd_present(pmd) && !pmd_leaf(pmd) && !pmd_bad(pmd); }

struct page *mitosis_pmd_huge_page(pmd_t pmd)
{ return pmd_present(pmd) && pmd_trans_huge(pmd) ? pmd_page(pmd) : NULL; }

unsigned long mitosis_pmd_addr_end(unsigned long addr, unsigned long end)
{ return pmd_addr_end(addr, end); }

pte_t *mitosis_pte_offset_kernel(pmd_t *pmd, unsigned long addr)
{ return pte_offset_kernel(pmd, addr); }

bool mitosis_pte_none(pte_t *pte)
{ return pte_none(ptep_get(pte)); }

/* Snapshot inodes kept after their last child (src/snapfs.rs). */
void mitosis_init_delayed_work(struct delayed_work *dw, work_func_t fn)
{ INIT_DELAYED_WORK(dw, fn); }

bool mitosis_queue_delayed_work(struct delayed_work *dw, unsigned long delay)
{ return queue_delayed_work(system_wq, dw, delay); }

unsigned int mitosis_param_keep_ms;
module_param_named(keep_ms, mitosis_param_keep_ms, uint, 0644);
MODULE_PARM_DESC(keep_ms, "Keep a snapshot's pages on this host for this many ms after its last child here exited, so the next child starts from them (0: drop at once; rmmod waits until they are dropped)");

/* Files of the host's own filesystems (src/vfs.rs). */
void mitosis_get_file(struct file *f)
{ get_file(f); }

long mitosis_file_count(struct file *f)
{ return file_count(f); }

bool mitosis_file_is_regular(struct file *f)
{ return S_ISREG(file_inode(f)->i_mode); }

bool mitosis_file_unlinked(struct file *f)
{ return d_unlinked(f->f_path.dentry); }

loff_t mitosis_file_size(struct file *f)
{ return i_size_read(file_inode(f)); }

time64_t mitosis_file_mtime_sec(struct file *f)
{ return inode_get_mtime_sec(file_inode(f)); }

char *mitosis_file_path(struct file *f, char *buf, int len)
{ return d_path(&f->f_path, buf, len); }
