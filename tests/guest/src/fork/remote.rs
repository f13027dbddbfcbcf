//! Guest B: remote children and the driving side of the line protocol.

use super::parent::{finish_lazy, start_lazy};
use super::*;

/// Guest B.
pub fn remote(r: &mut Report, peer: Ipv4Addr, port: u16, n_children: usize) -> ExitCode {
    let addr = std::net::SocketAddr::from((peer, port));
    let stream = (0..120).find_map(|_| {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .ok()
            .or_else(|| {
                std::thread::sleep(Duration::from_millis(250));
                None
            })
    });
    let Some(stream) = stream else {
        r.check("rf-connect-parent", false, "no fork-parent on A", &[]);
        return ExitCode::FAILURE;
    };
    let mut out = stream.try_clone().expect("clone");
    let mut lines = BufReader::new(stream).lines();
    let mut next = || lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let h: Option<SnapshotHandle> = next().strip_prefix("handle ").and_then(|s| s.parse().ok());
    let lazy: Option<SnapshotHandle> = next().strip_prefix("lazy ").and_then(|s| s.parse().ok());
    let forced: Option<SnapshotHandle> =
        next().strip_prefix("forced ").and_then(|s| s.parse().ok());
    let sparse: Option<u64> = next().strip_prefix("sparse ").and_then(|s| s.parse().ok());
    let dyn_h: Option<SnapshotHandle> = next().strip_prefix("dyn ").and_then(|s| s.parse().ok());
    let plain: Option<SnapshotHandle> = next().strip_prefix("plain ").and_then(|s| s.parse().ok());
    let (Some(h), Some(lazy)) = (h, lazy) else {
        r.check("rf-handle", false, "no handle from A", &[]);
        return ExitCode::FAILURE;
    };
    // Children of the dynamically linked C program. Its open lingers after the child
    // (long enough for what follows).
    let linger = std::fs::write(LINGER_PARAM, "60000");
    let dyn_ok = dyn_h
        .and_then(|d| launch(&d, false).ok())
        .map(|c| run_child(c, &role_of_this_host()).0.success());
    r.check(
        "rf-dyn-child",
        dyn_ok == Some(true),
        format!("{dyn_ok:?}"),
        &[],
    );
    let m = Mitosis::open().expect("open");
    // A forced release revokes the lingering open's keys: the next resume, which
    // would read the descriptor through them while its open is in flight, is refused
    // like any resume of a released snapshot.
    if let Some(d) = dyn_h {
        let _ = writeln!(out, "force-release {d}");
        let revoked = next() == "force-released";
        let e = m.fork_resume(&d, ResumeOptions::default());
        r.check(
            "rf-lingering-open-revoked-eacces",
            linger.is_ok() && revoked && e.raw_os_error() == Some(libc::EACCES),
            format!("open_linger_ms {linger:?}, force-released {revoked}, resume: {e}"),
            &[],
        );
    }
    if let Some(p) = plain {
        lingering_open(r, &m, &p, &mut out, &mut next);
    }
    let _ = std::fs::write(LINGER_PARAM, "5000");
    // Wrong secret: the launcher stays itself, with a distinct errno.
    let mut wrong = h;
    wrong.secret[0] ^= 1;
    let e = m.fork_resume(&wrong, ResumeOptions::default());
    r.check(
        "rf-wrong-secret-eacces",
        e.raw_os_error() == Some(libc::EACCES),
        e.to_string(),
        &[],
    );
    // A launcher whose vDSO sits inside the seed's memory (placed there on purpose):
    // the library moves it out of the way and the resume succeeds.
    let collide = sparse.and_then(|addr| {
        let c = Command::new("/proc/self/exe")
            .args([
                "launch-with-vdso-at",
                &(addr + (64 << 20)).to_string(),
                &h.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        Some(run_child(c, "verify 300").0.success())
    });
    r.check(
        "rf-vdso-collision-resolved",
        collide == Some(true),
        format!("{collide:?}"),
        &[],
    );
    // A launcher with a pending signal (SIGUSR2, fatal by default: the child would die
    // of it) and an armed interval timer: a forked child starts with neither.
    let dirty = Command::new("/proc/self/exe")
        .args(["launch-dirty", &h.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map(|c| run_child(c, "launcher-state"));
    r.check(
        "rf-child-drops-launcher-signals-and-timers",
        matches!(&dirty, Ok((st, _)) if st.success()),
        format!("{:?}", dirty.as_ref().map(|(st, _)| st)),
        &[],
    );
    check_identity_model(r, &h);
    // A multi-threaded caller can neither resume nor be captured (EBUSY, and it lives).
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let helper = std::thread::spawn(move || {
        let _ = stop_rx.recv();
    });
    let e = m.fork_resume(&h, ResumeOptions::default());
    r.check(
        "rf-multithreaded-resume-ebusy",
        e.raw_os_error() == Some(libc::EBUSY),
        e.to_string(),
        &[],
    );
    let mut cap = abi::ForkCaptureArgs {
        hdr: abi::Header::for_struct::<abi::ForkCaptureArgs>(),
        ..Default::default()
    };
    // SAFETY: a valid argument struct; the module refuses before capturing anything.
    let rc = unsafe {
        m.raw_ioctl(
            abi::IOC_FORK_CAPTURE,
            &mut cap as *mut _ as *mut libc::c_void,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error();
    r.check(
        "rf-multithreaded-capture-ebusy",
        rc < 0 && errno == Some(libc::EBUSY),
        format!("rc {rc} errno {errno:?}"),
        &[],
    );
    let _ = stop_tx.send(());
    let _ = helper.join();
    let mut unknown = h;
    unknown.id += 1000;
    let e = m.fork_resume(&unknown, ResumeOptions::default());
    r.check(
        "rf-unknown-id-eacces",
        e.raw_os_error() == Some(libc::EACCES),
        e.to_string(),
        &[],
    );

    // The lazy children of the second and third snapshots start now and wait.
    let lazy_child = start_lazy(&lazy);
    r.check("rf-lazy-child-ready", lazy_child.is_some(), "", &[]);
    let forced_child = forced.and_then(|f| start_lazy(&f));
    r.check("rf-forced-child-ready", forced_child.is_some(), "", &[]);

    // Concurrent children on B (A runs its own at the same time), one eager.
    let recorded_before = ws_recorded();
    let t = Instant::now();
    let kids: Vec<_> = (0..n_children)
        .filter_map(|i| {
            launch(&h, i == 0)
                .ok()
                .map(|c| (c, format!("verify {}", 200 + i)))
        })
        .collect();
    let launched = kids.len();
    let mut ok = 0;
    for (i, (st, lines)) in run_children(kids).into_iter().enumerate() {
        if status_ok(&st) {
            ok += 1;
        }
        if i == 0 {
            let eager = lines
                .iter()
                .any(|l| l.contains("rf-child-resumed") && !l.contains("\"eager_pages\":0.000"));
            r.check(
                "rf-eager-child",
                status_ok(&st) && eager,
                "child resumed with --eager fetched pages up front",
                &[],
            );
        }
    }
    r.check(
        "rf-remote-children",
        launched == n_children && ok == n_children,
        format!("{ok}/{n_children} children on B verified"),
        &[
            ("children", n_children as f64),
            ("wall_ms", t.elapsed().as_secs_f64() * 1e3),
        ],
    );
    check_first_touches_in_resume_batch(r, &h, recorded_before);
    check_serial_eager_fetch(r, &h);
    check_sequential_readahead(r, &h);

    // Two hops: B's child prepares, A resumes a grandchild.
    let hop_ok = match launch(&h, false) {
        Ok(mut c) => {
            if let Some(i) = c.stdin.as_mut() {
                let _ = writeln!(i, "hop");
            }
            let mut reader = BufReader::new(c.stdout.take().expect("stdout"));
            let mut h3 = None;
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                print!("{line}");
                if let Some(x) = line.trim().strip_prefix("HOP ") {
                    h3 = Some(x.to_string());
                    break;
                }
                line.clear();
            }
            let done = match h3 {
                Some(h3) => {
                    let _ = writeln!(out, "hop {h3}");
                    next() == "hop-done 1"
                }
                None => false,
            };
            if let Some(i) = c.stdin.as_mut() {
                let _ = writeln!(i, "done");
            }
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            print!("{rest}");
            let st = c.wait().map(|s| s.success()).unwrap_or(false);
            done && st
        }
        Err(_) => false,
    };
    r.check("rf-two-hop", hop_ok, "A -> B -> A", &[]);

    // Release while a child runs: it keeps working; new resumes get EACCES (as for an
    // id that never existed).
    let release_ok = match launch(&h, false) {
        Ok(mut c) => {
            if let Some(i) = c.stdin.as_mut() {
                let _ = writeln!(i, "wait-go");
            }
            let mut reader = BufReader::new(c.stdout.take().expect("stdout"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let rm = Command::new("rmmod")
                .arg("mitosis")
                .status()
                .map(|s| s.success())
                .unwrap_or(true);
            r.check(
                "rf-rmmod-refused-with-child",
                !rm,
                "rmmod while a child maps a snapshot",
                &[],
            );
            let _ = writeln!(out, "release");
            let released = next() == "released";
            let e = m.fork_resume(&h, ResumeOptions::default());
            r.check(
                "rf-released-eacces",
                e.raw_os_error() == Some(libc::EACCES),
                e.to_string(),
                &[],
            );
            if let Some(i) = c.stdin.as_mut() {
                let _ = writeln!(i, "go");
            }
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            print!("{rest}");
            released && c.wait().map(|s| s.success()).unwrap_or(false)
        }
        Err(_) => false,
    };
    r.check(
        "rf-release-while-running",
        release_ok,
        "child verified everything after release",
        &[],
    );

    // Forced release: the waiting child's next remote fault is a SIGBUS.
    let _ = writeln!(
        out,
        "force-release {}",
        forced.map(|f| f.to_string()).unwrap_or_default()
    );
    let force_ok = next() == "force-released";
    let sig = forced_child.and_then(finish_lazy);
    r.check(
        "rf-sigbus-after-forced-release",
        force_ok && sig == Some(libc::SIGBUS),
        format!("child ended with signal {sig:?}"),
        &[],
    );

    // The parent guest goes away while the lazy child still has unfetched pages.
    let _ = writeln!(out, "bye");
    drop(out);
    let gone = (0..120).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        !Command::new("ping")
            .args(["-c", "1", "-W", "1", &peer.to_string()])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    r.check("rf-parent-guest-gone", gone, "A stopped answering", &[]);
    if let Some(mut c) = lazy_child {
        if let Some(i) = c.stdin.as_mut() {
            let _ = writeln!(i, "go");
        }
        let _ = echo_all(&mut c);
        let st = c.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        let sig = st.signal();
        r.check(
            "rf-sigbus-when-parent-gone",
            sig == Some(libc::SIGBUS),
            format!("child ended with {st:?}"),
            &[],
        );
    }
    let healthy = Mitosis::open().and_then(|m| m.status()).is_ok();
    r.check("rf-host-healthy-after-sigbus", healthy, "", &[]);
    ExitCode::SUCCESS
}

const REPLAY_ASYNC_PARAM: &str = "/sys/module/mitosis/parameters/replay_async";
const LINGER_PARAM: &str = "/sys/module/mitosis/parameters/open_linger_ms";
const WORKING_SET_PARAM: &str = "/sys/module/mitosis/parameters/working_set";

/// A later child through a lingering open (`open_linger_ms` is long here): with
/// working sets off, so that no report changes what the parent hands out, the
/// second child's resume sends no control message at all (the snapshot's status page,
/// read in its descriptor batch, vouches for the open); after a release without
/// FORCE, whose keys stay valid for this host's open, a resume reads the status page,
/// asks the parent, and is refused.
fn lingering_open(
    r: &mut Report,
    m: &Mitosis,
    p: &SnapshotHandle,
    out: &mut TcpStream,
    next: &mut impl FnMut() -> String,
) {
    let ws = std::fs::write(WORKING_SET_PARAM, "0");
    let sent = || {
        m.status()
            .map(|s| s.counters.ctrl_msgs_sent)
            .unwrap_or(u64::MAX)
    };
    let child = || launch(p, false).map(|c| run_child(c, "exit").0.success());
    let first = child();
    let before = sent();
    let second = child();
    let msgs = sent().saturating_sub(before);
    r.check(
        "rf-lingering-open-reused",
        ws.is_ok() && matches!((&first, &second), (Ok(true), Ok(true))) && msgs == 0,
        format!("children {first:?} {second:?}, control messages sent for the second: {msgs}"),
        &[("ctrl_msgs", msgs as f64)],
    );
    let _ = std::fs::write(WORKING_SET_PARAM, "1");
    let _ = writeln!(out, "release-plain");
    let released = next() == "released";
    let e = m.fork_resume(p, ResumeOptions::default());
    r.check(
        "rf-lingering-open-released-eacces",
        released && e.raw_os_error() == Some(libc::EACCES),
        format!("released {released}, resume: {e}"),
        &[],
    );
}

/// An eager child with one READ batch per connection (`read_batches=1`): its fetch
/// reads the batches one after another itself, where by default it keeps several in
/// flight on the workqueue (the eager child above). Both must bring every page.
fn check_serial_eager_fetch(r: &mut Report, h: &SnapshotHandle) {
    let (child, set) = with_param("read_batches", "1", || {
        launch(h, true).map(|c| run_child(c, "verify 210"))
    });
    let (ok, eager) = match &child {
        Ok((st, lines)) => (
            status_ok(st),
            metric(lines, "rf-child-resumed", "eager_pages").unwrap_or(0.0),
        ),
        Err(_) => (false, 0.0),
    };
    r.check(
        "rf-eager-child-serial-fetch",
        set.is_ok() && ok && eager > 0.0,
        format!(
            "read_batches 1 and back: {set:?}; child verified {ok}, {eager} pages fetched eagerly"
        ),
        &[("eager_pages", eager)],
    );
}

/// A child alone with a cold page cache and no working-set replay (`working_set=0`)
/// reads its 32 MiB heap in order: once its fault window reached its largest, the
/// windows after it are read ahead in the background, each first access to a window
/// starting the next, and its verification sees the pages they brought. About 125
/// windows of 64 pages; the check asks for a quarter of that, and the child's
/// demand faults that read are reported.
fn check_sequential_readahead(r: &mut Report, h: &SnapshotHandle) {
    let ((child, ahead, faults), set) = with_param("working_set", "0", || {
        let (ahead0, faults0) = (
            counter(|c| c.readahead_windows),
            counter(|c| c.remote_faults),
        );
        let child = launch(h, false).map(|c| run_child(c, "verify 220"));
        let ahead = counter(|c| c.readahead_windows).saturating_sub(ahead0);
        let faults = counter(|c| c.remote_faults).saturating_sub(faults0);
        (child, ahead, faults)
    });
    let ok = matches!(&child, Ok((st, _)) if status_ok(st));
    r.check(
        "rf-sequential-readahead",
        set.is_ok() && ok && ahead >= 32,
        format!("child verified {ok}; {ahead} windows read ahead, {faults} demand faults read (working_set 0 and back: {set:?})"),
        &[("readahead_windows", ahead as f64), ("remote_faults", faults as f64)],
    );
}

/// Runs `f` with module parameter `name` set to `value`, then sets it back; with
/// whether both writes succeeded.
fn with_param<T>(name: &str, value: &str, f: impl FnOnce() -> T) -> (T, std::io::Result<()>) {
    let path = format!("/sys/module/mitosis/parameters/{name}");
    let before = match std::fs::read_to_string(&path) {
        Ok(v) => v,
        Err(e) => return (f(), Err(e)),
    };
    let set = std::fs::write(&path, value);
    let out = f();
    (out, set.and(std::fs::write(&path, before.trim())))
}

/// This host's count of working-set records stored (a pager's end stores one).
fn ws_recorded() -> u64 {
    counter(|c| c.ws_recorded)
}

/// One of this host's counters (0 if the module does not answer).
fn counter(which: impl Fn(&mitosis_abi::ioctl::Counters) -> u64) -> u64 {
    Mitosis::open()
        .and_then(|m| m.status())
        .map_or(0, |s| which(&s.counters))
}

/// Metric `key` of check `check` in a child's output lines.
fn metric(lines: &[String], check: &str, key: &str) -> Option<f64> {
    let line = lines
        .iter()
        .find(|l| l.contains(&format!("\"check\":\"{check}\"")))?;
    let rest = &line[line.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Once the children before have exited, their pager's end stores this host's record
/// of what they touched; the next child of the snapshot reads the record's first
/// pages (in touch order) in its descriptor's batch. With the rest of the record
/// replayed in the background, the resume report's prefetched pages are exactly
/// those: none would mean the resume ignored them.
fn check_first_touches_in_resume_batch(r: &mut Report, h: &SnapshotHandle, recorded_before: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ws_recorded() == recorded_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let recorded = ws_recorded() > recorded_before;
    let set = std::fs::write(REPLAY_ASYNC_PARAM, "1");
    let child = launch(h, false).map(|c| run_child(c, "verify 300"));
    let _ = std::fs::write(REPLAY_ASYNC_PARAM, "0");
    let (ok, prefetched) = match &child {
        Ok((st, lines)) => (
            status_ok(st),
            metric(lines, "rf-child-resumed", "prefetched_pages"),
        ),
        Err(_) => (false, None),
    };
    r.check(
        "rf-first-touches-in-resume-batch",
        recorded && set.is_ok() && ok && prefetched.is_some_and(|p| p > 0.0),
        format!(
            "record stored {recorded}, replay_async {set:?}, child verified {ok}, prefetched {prefetched:?}"
        ),
        &[("prefetched_pages", prefetched.unwrap_or(f64::NAN))],
    );
}

/// The uid (and gid) children run as with `mitosis resume --user`.
const CHILD_UID: u32 = 65534;
const UNPRIVILEGED_PARAM: &str = "/sys/module/mitosis/parameters/unprivileged_children";

/// The identity model: `--user` resumes into an unprivileged identity (no groups,
/// `no_new_privs`, no device access); with `unprivileged_children` set the module
/// refuses a privileged launcher (EPERM) and still admits an unprivileged one.
fn check_identity_model(r: &mut Report, h: &SnapshotHandle) {
    let user = format!("{CHILD_UID}:{CHILD_UID}");
    let as_user = |task: &str| {
        Command::new("mitosis")
            .args(["resume", "--user", &user, &h.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map(|c| run_child(c, task).0)
    };
    let child = as_user("identity");
    r.check(
        "rf-resume-as-unprivileged-user",
        matches!(&child, Ok(st) if st.success()),
        format!("{child:?}"),
        &[],
    );
    let set_policy = |on: bool| std::fs::write(UNPRIVILEGED_PARAM, if on { "1" } else { "0" });
    let policy = set_policy(true);
    let root = Command::new("mitosis")
        .args(["resume", &h.to_string()])
        .stdin(Stdio::null())
        .output();
    let refused = matches!(&root, Ok(o) if o.status.code() == Some(1)
        && String::from_utf8_lossy(&o.stderr).contains("Operation not permitted"));
    let admitted = as_user("identity");
    let restored = set_policy(false);
    r.check(
        "rf-unprivileged-policy-refuses-root",
        policy.is_ok() && refused,
        format!(
            "setting the parameter: {policy:?}; root launcher: {:?}",
            root.map(|o| (o.status, String::from_utf8_lossy(&o.stderr).into_owned()))
        ),
        &[],
    );
    r.check(
        "rf-unprivileged-policy-admits-user",
        restored.is_ok() && matches!(&admitted, Ok(st) if st.success()),
        format!("{admitted:?}, parameter restored: {restored:?}"),
        &[],
    );
}
