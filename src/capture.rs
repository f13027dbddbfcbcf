// SPDX-License-Identifier: GPL-2.0

//! fork_prepare, parent side: where a snapshot is captured.
//!
//! The caller is the *seed*: the user-space library's `fork()` copy of the process
//! being prepared, so its memory is a copy-on-write image of the parent at the prepare
//! call and nothing else runs in it. At its `FORK_CAPTURE` syscall we record its
//! execution state ([`TaskState`] + the FPU image), every VMA, and take a reference on
//! every present page (GUP with `FOLL_DUMP`: present pages and THP subpages are
//! returned, swapped-out pages are brought back, never-touched anonymous pages are
//! holes). The references keep the frames (and so the snapshot) unchanged after the
//! seed exits: a parent write copies, because the page is not exclusively its own.
//! The descriptor goes into fresh pages in front of the data pages, and the whole set
//! is published like a region: a peer can read only these pages, with the snapshot's
//! id and secret.

// Policy code: every raw kernel operation it needs lives in the abstractions
// (`task.rs`, `mm.rs`, `fpu.rs`, `pager.rs`, `rdma/`).
#![deny(unsafe_code)]

use crate::abi::ioctl::Pod;
use crate::abi::snapshot::{
    encode_with_files, encoded_len, vma_flags, Descriptor, FileRef, PageRun, TaskState, Vma,
    FILE_PATH_MAX, MAX_FILES, MAX_LEAD_PAGES, PAGE, RUN_PRESENT, TASK_STATE_LEN,
};
use crate::bindings;
use crate::counters::{count, COUNTERS};
use crate::mm::{
    page_present, GupBatch, MmapReadGuard, Special, VmaView, GUP_BATCH, MAX_VMAS, PMD_BYTES,
    PMD_PAGES,
};
use crate::rdma::pages::{PageSet, PageSpan};
use crate::region::Origin;
use crate::state::Host;
use crate::task::CurrentTask;
use crate::vfs::OpenFile;
use kernel::prelude::*;

/// Most pages one snapshot may hold (keys for them must fit one control reply).
const MAX_SNAPSHOT_PAGES: usize =
    crate::abi::wire::MAX_REPLY_RKEYS * crate::control::MAX_CHUNK_PAGES;

/// What a capture produced.
pub(crate) struct Captured {
    pub(crate) id: u64,
    pub(crate) secret: [u8; 16],
    pub(crate) n_vmas: u64,
    pub(crate) present: u64,
    pub(crate) holes: u64,
    pub(crate) desc_bytes: u64,
}

/// Captures the calling task; `args_addr` is its `ForkCaptureArgs` (children get their
/// resume report there).
pub(crate) fn capture(host: &Host, args_addr: u64) -> Result<Captured> {
    // One way of holding pages for the whole capture (the parameter may change).
    let pin = crate::params::pin_pages();
    let mut st = boxed_task_state()?;
    st.capture_args = args_addr;
    capture_task(&mut st);
    let fpu = crate::fpu::capture().inspect_err(|e| pr_warn!("capture: FPU state: {:?}\n", e))?;
    st.fpu_xfeatures = u64::from_le_bytes(fpu[512..520].try_into().map_err(|_| EINVAL)?);
    st.fpu_xcomp_bv = u64::from_le_bytes(fpu[520..528].try_into().map_err(|_| EINVAL)?);
    let mut vmas = KVVec::new();
    let mut runs = KVVec::new();
    let mut data = PageSet::empty();
    let mut batch = GupBatch::new()?;
    let mut holes = 0u64;
    // Clean private file mappings, as (VMA index, file, file offset): their identity is
    // read once the mmap lock is dropped (it reads the file).
    let mut clean_files = KVVec::new();
    {
        let mm = MmapReadGuard::current()
            .inspect_err(|e| pr_warn!("capture: no address space: {:?}\n", e))?;
        capture_mm_fields(&mm, &mut st);
        let mut addr = 0u64;
        while let Some(v) = mm.vma_from(addr) {
            addr = v.end;
            let flags = match v.special {
                Special::Vdso => vma_flags::VDSO,
                Special::Vvar => vma_flags::VVAR,
                // Device memory is never captured (documented in docs/design.md).
                Special::Other => continue,
                Special::None => prot_flags(&v, &st),
            };
            if vmas.len() >= MAX_VMAS {
                return Err(E2BIG);
            }
            let first_run = runs.len();
            // `MADV_WIPEONFORK` memory reads as zeros in a forked child: no pages.
            let wiped = v.flags & bindings::VM_WIPEONFORK as u64 != 0;
            if v.special == Special::None && !wiped {
                let c = capture_pages(host, &mm, &v, pin, &mut batch, &mut runs, &mut data)
                    .inspect_err(|e| {
                        pr_warn!(
                            "capture: pages of VMA {:#x}-{:#x} (flags {:#x}): {:?}\n",
                            v.start,
                            v.end,
                            v.flags,
                            e
                        )
                    })?;
                holes += c.holes;
                let private = flags & (vma_flags::SHARED | vma_flags::GROWSDOWN) == 0;
                if let (Some(f), true, true) = (v.file, c.clean, private) {
                    clean_files.push(
                        (
                            vmas.len(),
                            OpenFile::from_vma(&f),
                            v.pgoff.saturating_mul(PAGE),
                        ),
                        GFP_KERNEL,
                    )?;
                }
            }
            vmas.push(
                Vma {
                    start: v.start,
                    end: v.end,
                    prot: 0,
                    flags,
                    file_offset: 0,
                    first_run: first_run as u32,
                    n_runs: (runs.len() - first_run) as u32,
                    file_id: 0,
                    _pad: 0,
                },
                GFP_KERNEL,
            )?;
        }
    }
    let files = record_files(&mut vmas, clean_files)?;
    st.fpu_len = fpu.len() as u32;
    let mut state_bytes = KVVec::with_capacity(TASK_STATE_LEN + fpu.len(), GFP_KERNEL)?;
    state_bytes.extend_from_slice(st.as_bytes(), GFP_KERNEL)?;
    state_bytes.extend_from_slice(&fpu, GFP_KERNEL)?;
    drop(fpu);

    let desc = encode_descriptor(&vmas, &runs, &files, data.len(), &state_bytes)?;
    // The pages a child needs first, packed, go right after the descriptor (the data
    // moves up by as many pages), so a child reads them with it in one batch.
    let lead = packed_lead(&desc, &data)?;
    for r in runs.iter_mut().filter(|r| r.kind == RUN_PRESENT) {
        r.data_page = r.data_page.checked_add(lead.len() as u64).ok_or(E2BIG)?;
    }
    let desc = encode_descriptor(&vmas, &runs, &files, lead.len() + data.len(), &state_bytes)?;
    let desc_len = desc.len();
    let desc_pages = desc_len.div_ceil(PAGE as usize);
    // The status page comes last (`abi::snapshot::status_word`).
    let n_pages = desc_pages + lead.len() + data.len() + 1;
    if n_pages > MAX_SNAPSHOT_PAGES {
        return Err(E2BIG);
    }
    let mut pages = PageSet::empty();
    for chunk in desc.chunks(PAGE as usize) {
        let p = PageSpan::alloc_zeroed()?;
        p.write(0, chunk)?;
        pages.push(p)?;
    }
    let lead_pages = lead.len() as u32;
    let present = data.len() as u64;
    pages.append(lead)?;
    pages.append(data)?;
    pages.push(PageSpan::alloc_zeroed()?)?;
    let task = CurrentTask::get();
    let origin = Origin {
        seed_pid: task.tgid().max(0) as u32,
        parent_pid: task.parent_tgid().max(0) as u32,
    };
    let (id, secret) = host
        .publish_snapshot(pages, &desc, lead_pages, origin)
        .inspect_err(|e| pr_warn!("capture: publishing the snapshot: {:?}\n", e))?;
    Ok(Captured {
        id,
        secret,
        n_vmas: vmas.len() as u64,
        present,
        holes,
        desc_bytes: desc_len as u64,
    })
}

/// The descriptor of a snapshot with `data_pages` data pages.
fn encode_descriptor(
    vmas: &[Vma],
    runs: &[PageRun],
    files: &[FileRef],
    data_pages: usize,
    state: &[u8],
) -> Result<KVVec<u8>> {
    let len = encoded_len(vmas.len(), runs.len(), files.len(), state.len()).ok_or(E2BIG)?;
    let mut desc = KVVec::from_elem(0u8, len, GFP_KERNEL)?;
    encode_with_files(vmas, runs, files, data_pages as u64, state, &mut desc).map_err(|e| {
        pr_warn!("capture: descriptor encoding failed: {:?}\n", e);
        EINVAL
    })?;
    Ok(desc)
}

/// The data pages `desc` lists as a child's first needs
/// ([`Descriptor::lead_offsets`]), packed (`abi::packed`, each under its page-cache
/// index): a child reads them with the descriptor in one batch, and under emulation
/// every page that batch carries costs it about 0.1 ms, while a program's stack,
/// TLS and data pages compress 3-5x. None when `desc` lists none.
fn packed_lead(desc: &[u8], data: &PageSet) -> Result<PageSet> {
    let desc = Descriptor::parse(desc).map_err(|_| EINVAL)?;
    let mut offs = [0u64; MAX_LEAD_PAGES];
    let n = desc.lead_offsets(&mut offs);
    if n == 0 {
        return Ok(PageSet::empty());
    }
    let pages = offs[..n].iter().map(|&off| {
        let page = desc
            .data_offset_at(off)
            .and_then(|d| data.get(usize::try_from(d / PAGE).ok()?))
            .ok_or(EINVAL)?;
        Ok((off / PAGE, page.bytes()))
    });
    crate::packed::pack_pages(n, pages, usize::MAX)?.ok_or(EINVAL)
}

/// The VMA's protection and kind as descriptor flags.
fn prot_flags(v: &VmaView<'_>, st: &TaskState) -> u32 {
    let f = v.flags;
    let mut out = 0;
    for (vm, bit) in [
        (bindings::VM_READ, vma_flags::READ),
        (bindings::VM_WRITE, vma_flags::WRITE),
        (bindings::VM_EXEC, vma_flags::EXEC),
        (bindings::VM_SHARED, vma_flags::SHARED),
        (bindings::VM_GROWSDOWN, vma_flags::GROWSDOWN),
        (bindings::VM_NORESERVE, vma_flags::NORESERVE),
    ] {
        if f & vm as u64 != 0 {
            out |= bit;
        }
    }
    if v.file.is_some() {
        out |= vma_flags::FILE;
    }
    let holds_start_brk = v.start <= st.start_brk && st.start_brk < v.end;
    let inside_heap = v.start >= st.start_brk && v.start < st.brk;
    if v.file.is_none() && (holds_start_brk || inside_heap) {
        out |= vma_flags::HEAP;
    }
    out
}

/// Gives each clean private file mapping of `clean` the record of its file (one per
/// file), when the file has a path a child host could open: `file_id` and
/// `file_offset` of its VMA. The pages stay captured: a child host without the same
/// file fetches them as always. Files without such a path are left out.
fn record_files(vmas: &mut [Vma], clean: KVVec<(usize, OpenFile, u64)>) -> Result<KVVec<FileRef>> {
    let mut files: KVVec<FileRef> = KVVec::new();
    // The file behind each record, so that VMAs of one open file share it.
    let mut seen: KVVec<*mut bindings::file> = KVVec::new();
    let mut buf = KVec::from_elem(0u8, FILE_PATH_MAX + 1, GFP_KERNEL)?;
    for (vi, file, offset) in clean.into_iter() {
        let Some(vma) = vmas.get_mut(vi) else {
            continue;
        };
        let id = match seen.iter().position(|&p| p == file.as_ptr()) {
            Some(i) => i + 1,
            None => {
                if files.len() >= MAX_FILES {
                    continue;
                }
                let Some(path) = file.path(&mut buf) else {
                    continue;
                };
                let Ok(ident) = file.identity() else {
                    continue;
                };
                let Some(rec) = FileRef::new(path, ident.size, ident.mtime_sec, ident.head_hash)
                else {
                    continue;
                };
                files.push(rec, GFP_KERNEL)?;
                seen.push(file.as_ptr(), GFP_KERNEL)?;
                files.len()
            }
        };
        vma.file_id = id as u32;
        vma.file_offset = offset;
    }
    Ok(files)
}

/// What [`capture_pages`] found in one VMA.
struct VmaPages {
    holes: u64,
    /// A private file mapping whose pages were all its file's own page-cache pages
    /// before the capture (no `anon_vma`: never copied on write), so the file itself
    /// holds the content. Decided before the pages are taken: with `pin_pages`, a
    /// long-term pin of a page-cache page in a private mapping unshares it (the seed
    /// gets an anonymous copy).
    clean: bool,
}

/// Takes a reference on every present folio of `v` (pages of one folio share it),
/// appending runs (present pages only; pages between runs are holes) and data pages.
fn capture_pages(
    host: &Host,
    mm: &MmapReadGuard,
    v: &VmaView<'_>,
    pin: bool,
    batch: &mut GupBatch,
    runs: &mut KVVec<PageRun>,
    data: &mut PageSet,
) -> Result<VmaPages> {
    let n_pages = (v.end - v.start) / PAGE;
    // Pages of a snapshot file the child never touched are the source snapshot's
    // holes: keep them holes instead of faulting them in.
    let source = v.file.and_then(|f| host.snapshot_fs().pager_of_file(&f));
    let source_desc = source.map(|p| p.descriptor()).transpose()?;
    let mut holes = 0u64;
    let clean = source_desc.is_none() && v.file.is_some() && !v.has_anon;
    // Private anonymous memory: never-touched pages have no page-table entries, so
    // ranges without any are skipped whole (a sparse reservation costs its tables).
    let skip_unpopulated = v.anonymous && source_desc.is_none();
    let mut p = 0u64;
    let first_run = runs.len();
    while p < n_pages {
        let mut addr = v.start + p * PAGE;
        if skip_unpopulated {
            let next = mm.next_populated(addr, v.end);
            let skipped = next.saturating_sub(addr) / PAGE;
            holes += skipped;
            p += skipped;
            if p >= n_pages {
                break;
            }
            addr = next;
        }
        if let Some(d) = &source_desc {
            // By file offset, not address: the child may have moved or grown the
            // mapping (`mremap`).
            let file_off = (v.pgoff * PAGE).saturating_add(addr - v.start);
            if d.data_offset_at(file_off).is_none() && !page_present(addr) {
                holes += 1;
                p += 1;
                continue;
            }
        }
        // A huge page mapped whole by its PMD: one reference for its 512 pages, as
        // `fork()` copies one entry for them.
        let huge_fits = addr % PMD_BYTES == 0 && n_pages - p >= PMD_PAGES as u64;
        if skip_unpopulated && !pin && huge_fits {
            if let Some(span) = mm.take_pmd_mapped(addr) {
                count(&COUNTERS.huge_pages_captured, 1);
                keep(span, source_desc.is_some(), first_run, &mut p, runs, data)?;
                continue;
            }
        }
        // Batches end at PMD boundaries, so a huge page met is taken whole above.
        let to_boundary = ((PMD_BYTES - addr % PMD_BYTES) / PAGE) as usize;
        let want = ((n_pages - p) as usize).min(GUP_BATCH).min(to_boundary);
        let want = if source_desc.is_some() { 1 } else { want };
        let r = mm.take_pages(addr, want, pin, batch).inspect_err(|e| {
            pr_warn!(
                "capture: taking pages at {:#x} (VMA {:#x}-{:#x}, flags {:#x}) failed: {:?}\n",
                addr,
                v.start,
                v.end,
                v.flags,
                e
            )
        })?;
        if r == 0 {
            // Never touched (or the shared zero page): a hole.
            holes += 1;
            p += 1;
            continue;
        }
        for span in batch.take_spans() {
            keep(span, source_desc.is_some(), first_run, &mut p, runs, data)?;
        }
    }
    Ok(VmaPages { holes, clean })
}

/// Keeps `span`, the pages at VMA page `*p` on (advanced past them), in `data` and
/// `runs` (the VMA's runs start at `first_run`). `from_snapshot`: the pages are a
/// snapshot file's.
fn keep(
    span: PageSpan,
    from_snapshot: bool,
    first_run: usize,
    p: &mut u64,
    runs: &mut KVVec<PageRun>,
    data: &mut PageSet,
) -> Result {
    let n = span.len();
    if data.len().saturating_add(n) > MAX_SNAPSHOT_PAGES {
        pr_info!("capture: more than {} pages: refused\n", MAX_SNAPSHOT_PAGES);
        return Err(E2BIG);
    }
    add_run(runs, first_run, *p, data.len() as u64, n as u64)?;
    // A snapshot is immutable: a page anyone may still write (page cache of a file,
    // shmem, memfd, shared anonymous memory) is copied now; anonymous pages are
    // written only through copy-on-write, which our reference forces, and a snapshot
    // file's pages never change.
    if span.is_anon() || from_snapshot {
        data.push(span)?;
    } else {
        for k in 0..n {
            data.push(span.page(k).ok_or(EINVAL)?.copy()?)?;
        }
    }
    *p += n as u64;
    Ok(())
}

/// Records `n` present pages at `vma_page` of the VMA whose runs start at
/// `first_run`, held from data page `data_page` on: the last run grows when they
/// follow it in both.
fn add_run(
    runs: &mut KVVec<PageRun>,
    first_run: usize,
    vma_page: u64,
    data_page: u64,
    n: u64,
) -> Result {
    if runs.len() > first_run {
        if let Some(last) = runs.last_mut() {
            let grown = u32::try_from(n)
                .ok()
                .and_then(|n| last.n_pages.checked_add(n));
            let follows = last.page + u64::from(last.n_pages) == vma_page
                && last.data_page + u64::from(last.n_pages) == data_page;
            if let (true, Some(grown)) = (follows, grown) {
                last.n_pages = grown;
                return Ok(());
            }
        }
    }
    let n_pages = u32::try_from(n).map_err(|_| E2BIG)?;
    runs.push(
        PageRun {
            page: vma_page,
            n_pages,
            kind: RUN_PRESENT,
            data_page,
        },
        GFP_KERNEL,
    )?;
    Ok(())
}

/// A zeroed task state on the heap, built in a frame of its own (2.4 KiB that the
/// capture's stack, which GUP may extend with a fault into a snapshot file, does not
/// need to hold).
#[inline(never)]
fn boxed_task_state() -> Result<KBox<TaskState>> {
    Ok(KBox::new(TaskState::default(), GFP_KERNEL)?)
}

/// Registers, FS/GS base, kernel-registered user pointers, signal state.
fn capture_task(st: &mut TaskState) {
    let task = CurrentTask::get();
    st.regs = task.user_regs();
    (st.fsbase, st.gsbase) = task.fs_gs_base();
    let u = task.user_state();
    st.rseq = u.rseq;
    st.rseq_len = u.rseq_len as u32;
    st.rseq_sig = u.rseq_sig as u32;
    st.robust_list = u.robust_list;
    st.clear_child_tid = u.clear_child_tid;
    st.set_child_tid = u.set_child_tid;
    st.sas_ss_sp = u.sas_ss_sp;
    st.sas_ss_size = u.sas_ss_size;
    st.sas_ss_flags = u.sas_ss_flags as u32;
    st.blocked = u.blocked;
    task.read_sigactions(&mut st.sigactions);
}

fn capture_mm_fields(mm: &MmapReadGuard, st: &mut TaskState) {
    let l = mm.layout();
    st.start_code = l.start_code;
    st.end_code = l.end_code;
    st.start_data = l.start_data;
    st.end_data = l.end_data;
    st.start_brk = l.start_brk;
    st.brk = l.brk;
    st.start_stack = l.start_stack;
    st.arg_start = l.arg_start;
    st.arg_end = l.arg_end;
    st.env_start = l.env_start;
    st.env_end = l.env_end;
}
