//! A resumed child's main: verify, then run the task it reads from stdin.

use super::*;

use super::verify::*;

/// Reads one line of the child's task from the launcher's stdin.
pub(super) fn read_line() -> String {
    let mut s = String::new();
    let _ = std::io::stdin().lock().read_line(&mut s);
    s.trim().to_string()
}

/// Runs in every resumed child; never returns.
pub(super) fn child_main(
    w: &mut World,
    stack: &[u64; STACK_WORDS],
    resumed: mitosis::Resumed,
    m: &Mitosis,
) -> ! {
    let role = role_of_this_host();
    let task = read_line();
    let mut r = Report::new(&role);
    let mut words = task.split_whitespace();
    let code = match words.next() {
        Some("exit") => std::process::exit(0),
        Some("demo") => {
            crate::bench::demo_child(&mut r, w, &resumed);
            0
        }
        Some("bench") => {
            let label = words.next().unwrap_or("?");
            let faults = words.next().and_then(|v| v.parse().ok());
            crate::bench::bench_child(&mut r, w, &resumed, label, faults);
            0
        }
        Some("launcher-state") => {
            // SAFETY: plain reads of this process's own signal and timer state.
            let (pending, timer) = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigpending(&mut set);
                let mut t: libc::itimerval = std::mem::zeroed();
                libc::getitimer(libc::ITIMER_REAL, &mut t);
                (libc::sigismember(&set, libc::SIGUSR2), t.it_value.tv_sec)
            };
            let ok = pending == 0 && timer == 0;
            r.check(
                "rf-child-launcher-state-cleared",
                ok,
                format!("SIGUSR2 pending {pending}, ITIMER_REAL {timer} s left"),
                &[],
            );
            i32::from(!ok)
        }
        Some("identity") => {
            let ok = check_identity(&mut r, w);
            i32::from(!ok)
        }
        Some("slice") => {
            // Slice I of K of the heap (the concurrent-children benchmark): exit 0
            // if every page read back the seed's values.
            let i: usize = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let k: usize = words.next().and_then(|v| v.parse().ok()).unwrap_or(1);
            i32::from(!crate::bench::slice_child(w, i, k))
        }
        Some("scatter") => {
            // Random faults on slice I of K from instant START (the concurrent
            // random-access benchmark): exit 0 if every page read back the seed's.
            let mut arg = || words.next().and_then(|v| v.parse().ok());
            let (i, k, start) = (arg(), arg(), arg());
            i32::from(!crate::bench::scatter_child(
                w,
                i.unwrap_or(0) as usize,
                k.unwrap_or(1) as usize,
                start.unwrap_or(0),
            ))
        }
        Some("latency") => {
            let rest: Vec<&str> = words.collect();
            crate::bench::latency_child(&mut r, w, m, &rest.join(" "));
            0
        }
        Some("verify") => {
            verify_child(&mut r, w, stack, &resumed);
            let id = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            child_writes(&mut r, w, id);
            0
        }
        Some("hop") => {
            verify_child(&mut r, w, stack, &resumed);
            w.heap[2] = 0x4040;
            match m.fork_prepare() {
                Ok(Forked::Parent(p)) => {
                    println!("HOP {}", p.handle);
                    let _ = std::io::stdout().flush();
                    let _ = read_line();
                    let _ = m.fork_release(&p.handle, false);
                    0
                }
                Ok(Forked::Child(res)) => {
                    // The grandchild: the first hop's write must be there.
                    let mut g = Report::new(&role_of_this_host());
                    let _ = read_line();
                    g.check(
                        "rf-grandchild-resumed",
                        true,
                        "",
                        &[("resume_ms", res.resume.as_secs_f64() * 1e3)],
                    );
                    let hop_ok = w.heap[2] == 0x4040
                        && w.heap[3] == pattern_word(SEED_HEAP, 24)
                        && w.heap.len() > 1000
                        && w.heap[1000] == pattern_word(SEED_HEAP, 8000);
                    g.check(
                        "rf-grandchild-memory",
                        hop_ok,
                        format!("heap[2]={:#x}", w.heap[2]),
                        &[],
                    );
                    let tls = TLS_VALUE.with(|v| v.get());
                    g.check(
                        "rf-grandchild-tls",
                        tls == TLS_MAGIC,
                        format!("{tls:#x}"),
                        &[],
                    );
                    g.summary();
                    std::process::exit(if g.failed == 0 { 0 } else { 1 })
                }
                Err(e) => {
                    r.check("rf-hop-prepare", false, e.to_string(), &[]);
                    1
                }
            }
        }
        Some("wait-go") => {
            println!("READY");
            let _ = std::io::stdout().flush();
            let _ = read_line();
            verify_child(&mut r, w, stack, &resumed);
            0
        }
        Some("lazy") => {
            // Touch almost nothing, wait, then touch everything: the parent is gone by
            // then, so this child must die of SIGBUS.
            println!("READY");
            let _ = std::io::stdout().flush();
            let _ = read_line();
            let sum: u64 = w.heap.iter().fold(0, |a, b| a ^ b);
            println!("LAZY-SURVIVED {sum}");
            1
        }
        other => {
            r.check(
                "rf-child-task",
                false,
                format!("unknown task {other:?}"),
                &[],
            );
            1
        }
    };
    r.summary();
    let _ = std::io::stdout().flush();
    std::process::exit(if code == 0 && r.failed == 0 { code } else { 1 })
}

/// A child resumed with `--user 65534`: that identity and nothing more, its memory
/// still the seed's, and no access to `/dev/mitosis`.
fn check_identity(r: &mut Report, w: &World) -> bool {
    // SAFETY: plain credential queries of this process.
    let (uid, euid, gid, egid, groups) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
            libc::getgroups(0, std::ptr::null_mut()),
        )
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let nnp = status
        .lines()
        .any(|l| l.split_whitespace().eq(["NoNewPrivs:", "1"]));
    let caps_clear = status
        .lines()
        .any(|l| l.split_whitespace().eq(["CapEff:", "0000000000000000"]));
    let ids_ok = [uid, euid, gid, egid] == [65534; 4] && groups == 0 && nnp && caps_clear;
    r.check(
        "rf-child-unprivileged-identity",
        ids_ok,
        format!("uid {uid} euid {euid} gid {gid} egid {egid}, {groups} groups, no_new_privs {nnp}, no capability {caps_clear}"),
        &[],
    );
    let heap_ok = w.heap.first() == Some(&pattern_word(SEED_HEAP, 0));
    // Visible (the path resolves for this user), but its mode lets root only in.
    let visible = std::fs::metadata("/dev/mitosis").is_ok();
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mitosis");
    let no_device = visible && matches!(&device, Err(e) if e.raw_os_error() == Some(libc::EACCES));
    r.check(
        "rf-child-unprivileged-no-device",
        heap_ok && no_device,
        format!(
            "seed heap intact {heap_ok}; /dev/mitosis visible {visible}, opening it: {:?}",
            device.map(|_| ())
        ),
        &[],
    );
    ids_ok && heap_ok && no_device
}
