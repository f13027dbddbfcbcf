// SPDX-License-Identifier: GPL-2.0

//! The calling task's own state, as capture reads it and resume writes it: the user
//! register frame, FS/GS base, the per-thread user pointers the kernel keeps (rseq,
//! robust list, tid pointers, sigaltstack), signal dispositions and mask.
//!
//! Everything here acts on `current` only, which is what makes it sound: nothing else
//! writes these fields while the task is in a system call, and the dispositions are
//! read and written under the sighand lock signal delivery takes. Values that could
//! fault the kernel itself when loaded (non-canonical bases) are refused here, whatever
//! the caller checked before.

use crate::abi::snapshot::{SigAction, NSIG, PT_REGS_WORDS, USER_SA_FLAGS, X86_64_LIMITS};
use crate::bindings;
use core::ptr;
use kernel::prelude::*;

/// The per-thread user pointers and blocked mask, as the C helpers exchange them.
pub(crate) type UserState = bindings::mitosis_user_state;

/// The calling task. Only obtainable in process context through [`CurrentTask::get`].
///
/// # Invariants
///
/// Used only by the task it was obtained in (not `Send`).
pub(crate) struct CurrentTask {
    _not_send: core::marker::PhantomData<*const ()>,
}

impl CurrentTask {
    /// The calling task (process context: an ioctl).
    pub(crate) fn get() -> Self {
        CurrentTask {
            _not_send: core::marker::PhantomData,
        }
    }

    /// The user register frame (`struct pt_regs`, 21 words in kernel order).
    pub(crate) fn user_regs(&self) -> [u64; PT_REGS_WORDS] {
        // SAFETY: the current task's user register frame, 21 words on x86-64, stable
        // while it is in the kernel.
        let regs = unsafe { bindings::mitosis_current_pt_regs() } as *const u64;
        let mut out = [0u64; PT_REGS_WORDS];
        for (i, r) in out.iter_mut().enumerate() {
            // SAFETY: `i` < 21 words of the frame.
            *r = unsafe { *regs.add(i) };
        }
        out
    }

    /// Sets user register `i` of the frame (loaded on return to user mode; the entry
    /// code checks what it loads, as for `sigreturn`).
    pub(crate) fn set_user_reg(&self, i: usize, value: u64) -> Result {
        if i >= PT_REGS_WORDS {
            return Err(EINVAL);
        }
        // SAFETY: the current task's frame; `i` < 21 checked above.
        unsafe { *(bindings::mitosis_current_pt_regs() as *mut u64).add(i) = value };
        Ok(())
    }

    /// The user FS and GS base.
    pub(crate) fn fs_gs_base(&self) -> (u64, u64) {
        // SAFETY: reads of the current task's own base registers.
        unsafe {
            (
                bindings::mitosis_read_fsbase() as u64,
                bindings::mitosis_read_gsbase() as u64,
            )
        }
    }

    /// Sets the user FS and GS base; both must be user addresses (a non-canonical one
    /// would fault the MSR write in the kernel).
    pub(crate) fn set_fs_gs_base(&self, fs: u64, gs: u64) -> Result {
        if !X86_64_LIMITS.contains(fs, 0) || !X86_64_LIMITS.contains(gs, 0) {
            return Err(EINVAL);
        }
        // SAFETY: the current task's own bases, canonical user addresses.
        unsafe { bindings::mitosis_write_fsgsbase(fs as _, gs as _) };
        Ok(())
    }

    /// The per-thread user pointers and the blocked mask.
    pub(crate) fn user_state(&self) -> UserState {
        let mut s = UserState::default();
        // SAFETY: fills `s` from the current task.
        unsafe { bindings::mitosis_get_task_user_state(&mut s) };
        s
    }

    /// Sets the per-thread user pointers (not the mask: [`CurrentTask::set_blocked`]).
    /// They are user addresses the kernel only ever accesses with user copies.
    pub(crate) fn set_user_state(&self, s: &UserState) {
        // SAFETY: writes the current task's own fields from a valid struct.
        unsafe { bindings::mitosis_set_task_user_state(s) };
    }

    /// Whether the caller has `CAP_SYS_ADMIN`.
    pub(crate) fn is_admin(&self) -> bool {
        // SAFETY: checks the current task's credentials.
        unsafe { bindings::capable(bindings::CAP_SYS_ADMIN as i32) }
    }

    /// Whether the caller runs without any privilege: not root (effective uid), no
    /// effective capability, and `no_new_privs` set (so nothing it executes later
    /// gains any).
    pub(crate) fn is_unprivileged(&self) -> bool {
        // SAFETY: reads of the current task's credentials and flags.
        unsafe {
            !bindings::mitosis_current_euid_is_root()
                && bindings::mitosis_current_caps_clear()
                && bindings::mitosis_current_no_new_privs()
        }
    }

    /// This thread's id in its pid namespace.
    pub(crate) fn tid(&self) -> u32 {
        // SAFETY: reading the current task's id.
        unsafe { bindings::mitosis_current_tid() as u32 }
    }

    /// Reads the 64 signal dispositions into `out`, under the sighand lock (in place:
    /// 2 KiB the caller's stack need not hold twice).
    pub(crate) fn read_sigactions(&self, out: &mut [SigAction; NSIG]) {
        let _lock = SighandGuard::lock();
        // SAFETY: the sighand lock keeps the table stable; it has NSIG entries.
        unsafe {
            let actions = bindings::mitosis_sigactions();
            for (i, a) in out.iter_mut().enumerate() {
                let sa = ptr::addr_of!((*actions.add(i)).sa);
                *a = SigAction {
                    handler: ptr::read(ptr::addr_of!((*sa).sa_handler) as *const u64),
                    flags: (*sa).sa_flags as u64,
                    restorer: ptr::read(ptr::addr_of!((*sa).sa_restorer) as *const u64),
                    mask: (*sa).sa_mask.sig[0] as u64,
                };
            }
        }
    }

    /// Sets the signal dispositions under the sighand lock: SIGKILL and SIGSTOP are
    /// never changed, flags are limited to the user-settable ones (a kernel-only flag
    /// such as `SA_IMMUTABLE` is never set from here).
    pub(crate) fn set_sigactions(&self, actions: &[SigAction; NSIG]) {
        let _lock = SighandGuard::lock();
        // SAFETY: the sighand lock serialises with signal delivery; NSIG entries.
        unsafe {
            let table = bindings::mitosis_sigactions();
            for (i, a) in actions.iter().enumerate() {
                let sig = i as u32 + 1;
                if sig == bindings::SIGKILL || sig == bindings::SIGSTOP {
                    continue;
                }
                let sa = ptr::addr_of_mut!((*table.add(i)).sa);
                ptr::write(ptr::addr_of_mut!((*sa).sa_handler) as *mut u64, a.handler);
                (*sa).sa_flags = (a.flags & USER_SA_FLAGS) as _;
                ptr::write(ptr::addr_of_mut!((*sa).sa_restorer) as *mut u64, a.restorer);
                (*sa).sa_mask.sig[0] = a.mask as _;
            }
        }
    }

    /// Sets the blocked mask (SIGKILL and SIGSTOP can never be blocked).
    pub(crate) fn set_blocked(&self, mask: u64) -> Result {
        let never = (1u64 << (bindings::SIGKILL - 1)) | (1u64 << (bindings::SIGSTOP - 1));
        let mut set = bindings::sigset_t::default();
        set.sig[0] = (mask & !never) as _;
        // SAFETY: `set` is a valid signal set; the old one is not wanted.
        kernel::error::to_result(unsafe {
            bindings::sigprocmask(bindings::SIG_SETMASK as i32, &mut set, ptr::null_mut())
        })
    }

    /// Whether the caller is alone in its process and owns its address space (no
    /// other thread, no vfork parent or `CLONE_VM` sharer): only then may a capture end
    /// it or a resume replace its memory.
    pub(crate) fn mm_exclusive(&self) -> bool {
        // SAFETY: reads of the current task.
        unsafe { bindings::mitosis_current_mm_exclusive() }
    }

    /// The process id (thread-group id) in the caller's pid namespace.
    pub(crate) fn tgid(&self) -> i32 {
        // SAFETY: a read of the current task.
        unsafe { bindings::mitosis_current_tgid() }
    }

    /// The parent's process id in the caller's pid namespace (0 if it has none there).
    pub(crate) fn parent_tgid(&self) -> i32 {
        // SAFETY: a read of the current task's parent under RCU (in the helper).
        unsafe { bindings::mitosis_current_parent_tgid() }
    }

    /// Ends a captured seed: its exit must not write the captured memory (no
    /// `clear_child_tid` store, no robust-list walk), and SIGKILL is handled before it
    /// could run another user instruction.
    pub(crate) fn finish_seed(&self) {
        let mut u = self.user_state();
        u.clear_child_tid = 0;
        u.robust_list = 0;
        self.set_user_state(&u);
        self.kill();
    }

    /// Ends the calling task with SIGKILL (delivered before it returns to user mode).
    pub(crate) fn kill(&self) {
        // SAFETY: signalling the current task.
        unsafe { bindings::force_sig(bindings::SIGKILL as i32) };
    }
}

/// The current task's sighand lock, held for the guard's lifetime.
struct SighandGuard(());

impl SighandGuard {
    fn lock() -> Self {
        // SAFETY: the current task's sighand is live; unlocked in `Drop`.
        unsafe { bindings::mitosis_sighand_lock_current() };
        SighandGuard(())
    }
}

impl Drop for SighandGuard {
    fn drop(&mut self) {
        // SAFETY: locked in `lock`.
        unsafe { bindings::mitosis_sighand_unlock_current() };
    }
}
