// SPDX-License-Identifier: GPL-2.0

//! Page-table probes of the current address space: where a capture finds which pages of
//! anonymous memory were ever touched without asking GUP page by page, so a sparse
//! reservation costs its populated tables, not its size, and a transparent huge page
//! is taken whole from its PMD instead of page by page.

use crate::bindings;
use crate::mm::MmapReadGuard;
use core::ptr::NonNull;

/// An RCU read-side critical section: PTE tables may be freed after an RCU grace period
/// (as `__pte_offset_map` assumes), so they are read inside one.
struct RcuReadGuard(());

impl RcuReadGuard {
    fn new() -> Self {
        // SAFETY: paired with the unlock in `drop`; the guard is not `Send`-relevant
        // (kept on this stack frame, no sleeping while held: only loads below).
        unsafe { bindings::mitosis_rcu_read_lock() };
        RcuReadGuard(())
    }
}

impl Drop for RcuReadGuard {
    fn drop(&mut self) {
        // SAFETY: locked in `new`.
        unsafe { bindings::mitosis_rcu_read_unlock() };
    }
}

impl MmapReadGuard {
    /// The lowest address in `[addr, end)` whose page may be present: its PTE is not
    /// none, or it lies under a huge or non-table entry (a THP, a migration entry),
    /// which GUP resolves. `end` when the whole range is unpopulated.
    ///
    /// Meant for private anonymous VMAs, whose never-touched pages have no entries (a
    /// file mapping's untouched pages are still in its file and need GUP's fault). A
    /// page populated concurrently after the probe is like a write after the capture:
    /// the seed is single-threaded while it captures itself, so there is none.
    pub(crate) fn next_populated(&self, addr: u64, end: u64) -> u64 {
        let _rcu = RcuReadGuard::new();
        let mut a = addr as usize;
        let end = end as usize;
        while a < end {
            // SAFETY: the mm is read-locked (type invariant): its upper page-table
            // levels are freed only under the write lock.
            let (pgd, next) = unsafe {
                (
                    bindings::mitosis_pgd_offset(self.mm(), a as _),
                    bindings::mitosis_pgd_addr_end(a as _, end as _) as usize,
                )
            };
            // SAFETY: `pgd` points into the mm's live top-level table.
            if !unsafe { bindings::mitosis_pgd_none(pgd) } {
                if let Some(found) = p4d_populated(pgd, a, next) {
                    return found as u64;
                }
            }
            a = next;
        }
        end as u64
    }
}

impl MmapReadGuard {
    /// The page a PMD maps whole at `addr` (a transparent huge page mapped by one
    /// entry, present), read locklessly at the time of the call; `None` for anything
    /// else (a table of PTEs, nothing, a migration entry, a 1 GiB leaf).
    ///
    /// A caller that holds a reference on the page and then finds the same answer
    /// knows the PMD mapped all of that huge page at `addr` at that moment.
    pub(crate) fn pmd_mapped_page(&self, addr: u64) -> Option<NonNull<bindings::page>> {
        let _rcu = RcuReadGuard::new();
        let a = addr as _;
        // SAFETY: the mm is read-locked (type invariant): its upper page-table levels
        // are freed only under the write lock; each entry is tested before the level
        // below is read, and the PMD entry is read once, into a copy.
        unsafe {
            let pgd = bindings::mitosis_pgd_offset(self.mm(), a);
            if bindings::mitosis_pgd_none(pgd) {
                return None;
            }
            let p4d = bindings::mitosis_p4d_offset(pgd, a);
            if bindings::mitosis_p4d_none(p4d) {
                return None;
            }
            let pud = bindings::mitosis_pud_offset(p4d, a);
            if bindings::mitosis_pud_none(pud) || bindings::mitosis_pud_leaf(pud) {
                return None;
            }
            let pmd = bindings::mitosis_pmdp_get_lockless(bindings::mitosis_pmd_offset(pud, a));
            NonNull::new(bindings::mitosis_pmd_huge_page(pmd))
        }
    }
}

/// As [`MmapReadGuard::next_populated`], within one PGD entry (`pgd` not none).
fn p4d_populated(pgd: *mut bindings::pgd_t, mut a: usize, end: usize) -> Option<usize> {
    while a < end {
        // SAFETY: `pgd` is a live, present entry (caller); the mmap lock keeps its
        // table.
        let (p4d, next) = unsafe {
            (
                bindings::mitosis_p4d_offset(pgd, a as _),
                bindings::mitosis_p4d_addr_end(a as _, end as _) as usize,
            )
        };
        // SAFETY: `p4d` points into a live table.
        if !unsafe { bindings::mitosis_p4d_none(p4d) } {
            if let Some(found) = pud_populated(p4d, a, next) {
                return Some(found);
            }
        }
        a = next;
    }
    None
}

/// Within one P4D entry (`p4d` not none).
fn pud_populated(p4d: *mut bindings::p4d_t, mut a: usize, end: usize) -> Option<usize> {
    while a < end {
        // SAFETY: as in `p4d_populated`.
        let (pud, next) = unsafe {
            (
                bindings::mitosis_pud_offset(p4d, a as _),
                bindings::mitosis_pud_addr_end(a as _, end as _) as usize,
            )
        };
        // SAFETY: `pud` points into a live table.
        let (none, leaf) = unsafe {
            (
                bindings::mitosis_pud_none(pud),
                bindings::mitosis_pud_leaf(pud),
            )
        };
        if leaf {
            return Some(a);
        }
        if !none {
            if let Some(found) = pmd_populated(pud, a, next) {
                return Some(found);
            }
        }
        a = next;
    }
    None
}

/// Within one PUD entry (`pud` a present table).
fn pmd_populated(pud: *mut bindings::pud_t, mut a: usize, end: usize) -> Option<usize> {
    while a < end {
        // SAFETY: as in `p4d_populated`; the entry is read once, locklessly, and only
        // that copy is used (a THP split or collapse may change it meanwhile).
        let (mut pmd, next) = unsafe {
            (
                bindings::mitosis_pmdp_get_lockless(bindings::mitosis_pmd_offset(pud, a as _)),
                bindings::mitosis_pmd_addr_end(a as _, end as _) as usize,
            )
        };
        // SAFETY: plain tests of an entry's value.
        let (none, table) = unsafe {
            (
                bindings::mitosis_pmd_none(pmd),
                bindings::mitosis_pmd_table(pmd),
            )
        };
        if !none && !table {
            // A huge page, or an entry in migration: GUP sorts it out.
            return Some(a);
        }
        if table {
            while a < next {
                // SAFETY: `pmd` (our copy) points to a PTE table, kept by the RCU read
                // section of `next_populated` even if it is retracted meanwhile.
                if !unsafe {
                    bindings::mitosis_pte_none(bindings::mitosis_pte_offset_kernel(
                        &mut pmd, a as _,
                    ))
                } {
                    return Some(a);
                }
                a += crate::abi::snapshot::PAGE as usize;
            }
        }
        a = next;
    }
    None
}
