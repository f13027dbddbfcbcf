//! Launchers with unusual state of their own, which the child must not inherit.

use super::*;

/// `launch-dirty HANDLE`: a launcher with SIGUSR2 pending (blocked) and ITIMER_REAL
/// armed, then resumes; the child must have neither.
pub fn launch_dirty(handle: &str) -> ExitCode {
    let Ok(h) = handle.parse::<SnapshotHandle>() else {
        return ExitCode::from(2);
    };
    // SAFETY: plain changes of this process's own signal and timer state.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGUSR2);
        let mut t: libc::itimerval = std::mem::zeroed();
        t.it_value.tv_sec = 300;
        libc::setitimer(libc::ITIMER_REAL, &t, std::ptr::null_mut());
    }
    let e = match Mitosis::open() {
        Ok(m) => m.fork_resume(&h, ResumeOptions::default()),
        Err(e) => e,
    };
    eprintln!("launch-dirty: {e}");
    ExitCode::FAILURE
}

/// `launch-with-vdso-at ADDR HANDLE`: moves this process's vvar+vDSO to ADDR (inside the
/// seed's memory), then resumes: the module refuses with EADDRINUSE and the library
/// must move the vDSO away and succeed.
pub fn launch_with_vdso_at(addr: u64, handle: &str) -> ExitCode {
    let Ok(h) = handle.parse::<SnapshotHandle>() else {
        return ExitCode::from(2);
    };
    let Some(own) = mitosis::fork::own_vdso() else {
        return ExitCode::from(3);
    };
    if !own.move_to(addr) {
        return ExitCode::from(4);
    }
    let e = match Mitosis::open() {
        Ok(m) => m.fork_resume(&h, ResumeOptions::default()),
        Err(e) => e,
    };
    // Still here: resume failed. (No clock reads: the vDSO may be elsewhere.)
    let msg = format!("launch-with-vdso-at: {e}\n");
    // SAFETY: writing a buffer to stderr.
    unsafe { libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len()) };
    ExitCode::FAILURE
}
