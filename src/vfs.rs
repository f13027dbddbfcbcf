// SPDX-License-Identifier: GPL-2.0

//! Files of the host's own filesystems: the identity of a file a seed VMA maps
//! (capture) and opening a child host's copy of it (resume).
//!
//! A clean file-backed VMA (every page the seed had is the file's own page-cache page)
//! is recorded with its path and identity; a child host whose file at that path has
//! the same identity maps the VMA from it, like `exec` would, instead of fetching the
//! pages over the network. See [`crate::abi::snapshot::FileRef`].

use crate::abi::mac::{file_head_hash, FILE_HEAD_LEN};
use crate::abi::snapshot::FILE_PATH_MAX;
use crate::bindings;
use crate::mm::VmaFile;
use core::ptr::NonNull;
use kernel::prelude::*;

/// What identifies a file's content across hosts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct FileIdentity {
    pub(crate) size: u64,
    pub(crate) mtime_sec: i64,
    pub(crate) head_hash: [u8; 16],
}

/// A file reference we own.
///
/// # Invariants
///
/// `0` is a live file on which we hold one reference (dropped with `fput`).
pub(crate) struct OpenFile(NonNull<bindings::file>);

// SAFETY: a file reference may be used and dropped from any thread.
unsafe impl Send for OpenFile {}
// SAFETY: every method is safe to call concurrently (the VFS locks what it needs).
unsafe impl Sync for OpenFile {}

impl OpenFile {
    /// Opens `path` (NUL-terminated) read-only as the current task: resolved in its
    /// root and working directory, checked against its credentials, as `open(2)` from
    /// the task itself would. Never blocks on a FIFO (`O_NONBLOCK`), never acquires a
    /// terminal (`O_NOCTTY`); anything but a regular file is refused (`EINVAL`).
    pub(crate) fn open_read(path: &kernel::str::CStr) -> Result<Self> {
        let flags = bindings::O_RDONLY
            | bindings::O_NONBLOCK
            | bindings::O_NOCTTY
            | bindings::O_LARGEFILE
            | bindings::O_CLOEXEC;
        // SAFETY: `path` is NUL-terminated; `filp_open` returns a new reference or an
        // error pointer.
        let f = kernel::error::from_err_ptr(unsafe {
            bindings::filp_open(path.as_char_ptr(), flags as i32, 0)
        })?;
        // INVARIANT: a new reference, not an error.
        let file = OpenFile(NonNull::new(f).ok_or(ENOENT)?);
        // SAFETY: a live file (type invariant).
        if !unsafe { bindings::mitosis_file_is_regular(file.as_ptr()) } {
            return Err(EINVAL);
        }
        Ok(file)
    }

    /// A new reference to the file a VMA maps (kept after the mmap lock is dropped).
    pub(crate) fn from_vma(f: &VmaFile<'_>) -> Self {
        // SAFETY: the VMA holds `f` while its guard lives; we take our own reference.
        unsafe { bindings::mitosis_get_file(f.as_ptr()) };
        // INVARIANT: the reference just taken.
        // SAFETY: `f.as_ptr()` is non-null (a `VmaFile` invariant).
        OpenFile(unsafe { NonNull::new_unchecked(f.as_ptr()) })
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::file {
        self.0.as_ptr()
    }

    /// The file's identity: size, modification time, hash of its first page (read
    /// with `kernel_read`: needs a file opened for reading, which every readable
    /// mapping's file is). `EINVAL` for anything but a regular file.
    pub(crate) fn identity(&self) -> Result<FileIdentity> {
        let f = self.as_ptr();
        // SAFETY: a live file (type invariant).
        if !unsafe { bindings::mitosis_file_is_regular(f) } {
            return Err(EINVAL);
        }
        // SAFETY: as above.
        let size = unsafe { bindings::mitosis_file_size(f) };
        // SAFETY: as above.
        let mtime_sec = unsafe { bindings::mitosis_file_mtime_sec(f) };
        let size = u64::try_from(size).map_err(|_| EINVAL)?;
        let want = (size as usize).min(FILE_HEAD_LEN);
        let mut head = KVec::from_elem(0u8, want, GFP_KERNEL)?;
        let mut pos: bindings::loff_t = 0;
        let mut got = 0usize;
        while got < want {
            let rest = &mut head[got..];
            // SAFETY: `rest` is writable for its length; `pos` is ours.
            let n =
                unsafe { bindings::kernel_read(f, rest.as_mut_ptr().cast(), rest.len(), &mut pos) };
            if n < 0 {
                return Err(Error::from_errno(n as i32));
            }
            if n == 0 {
                // Shorter than its size said (truncated meanwhile): not the same file.
                return Err(EINVAL);
            }
            got += n as usize;
        }
        Ok(FileIdentity {
            size,
            mtime_sec,
            head_hash: file_head_hash(&head),
        })
    }

    /// The file's path in the current task's root, if it has one a child host could
    /// open (linked, not longer than a descriptor holds), into `buf` (one byte more
    /// than [`FILE_PATH_MAX`] is enough).
    pub(crate) fn path<'b>(&self, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let f = self.as_ptr();
        // SAFETY: a live file (type invariant).
        if unsafe { bindings::mitosis_file_unlinked(f) } {
            return None;
        }
        let len = buf.len().min(FILE_PATH_MAX + 1);
        // SAFETY: `buf` is writable for `len` bytes; `d_path` writes the path at the
        // end of it, NUL-terminated, and returns where it starts or an error pointer.
        let p = unsafe { bindings::mitosis_file_path(f, buf.as_mut_ptr().cast(), len as i32) };
        let p = kernel::error::from_err_ptr(p).ok()?;
        let start = (p as usize).checked_sub(buf.as_ptr() as usize)?;
        // The path runs from `start` to the NUL `d_path` put before `len`.
        let tail = buf.get(start..len)?;
        let n = tail.iter().position(|&b| b == 0)?;
        let path = &buf[start..start + n];
        // A file outside the task's root has no path there ("(unreachable)"), and a
        // path must fit a record.
        (path.first() == Some(&b'/') && path.len() <= FILE_PATH_MAX).then_some(path)
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        // SAFETY: our reference (type invariant).
        unsafe { bindings::fput(self.as_ptr()) };
    }
}
