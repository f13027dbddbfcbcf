//! Guest A: the seed, its local children and the parent side of the line protocol.

use super::*;

pub(super) fn verify_parent(r: &mut Report, w: &World) {
    let ok = w.heap.iter().enumerate().all(|(i, v)| {
        let orig = pattern_word(SEED_HEAP, 8 * i as u64);
        if i % 512 == 0 {
            *v == !orig
        } else {
            *v == orig
        }
    }) && w.map.get(&1).map(String::as_str) != Some("child-1");
    r.check(
        "rf-parent-unaffected-by-children",
        ok,
        "heap and map as the parent left them",
        &[],
    );
}

/// Guest A.
pub fn parent(r: &mut Report, port: u16, n_local: usize, heap_mib: usize) -> ExitCode {
    let t = Instant::now();
    let Some((m, mut w, p)) = prepare_world(r, heap_mib, true) else {
        return ExitCode::FAILURE;
    };
    r.check(
        "rf-prepare",
        true,
        p.handle.to_string(),
        &[
            ("prepare_ms", p.total.as_secs_f64() * 1e3),
            ("capture_ms", p.capture.as_secs_f64() * 1e3),
            ("vmas", p.n_vmas as f64),
            ("present_pages", p.present_pages as f64),
            ("hole_pages", p.hole_pages as f64),
            ("desc_bytes", p.desc_bytes as f64),
            ("touched_mib", w.touched_bytes() as f64 / (1 << 20) as f64),
            (
                "world_build_ms",
                (t.elapsed() - p.total).as_secs_f64() * 1e3,
            ),
        ],
    );
    w.scribble();
    // More snapshots of the same world, whose children run the task B gives them (no
    // stack check): a second, never released (B's lazy child uses it when A is gone);
    // a third, released with FORCE while a child waits; a fourth, released without
    // FORCE while B keeps an open of it lingering.
    let mut more = Vec::new();
    for name in ["rf-prepare-second", "rf-prepare-third", "rf-prepare-fourth"] {
        match m.fork_prepare() {
            Ok(Forked::Parent(p)) => more.push(p.handle),
            Ok(Forked::Child(res)) => child_main(&mut w, &[0; STACK_WORDS], res, &m),
            Err(e) => {
                r.check(name, false, e.to_string(), &[]);
                return ExitCode::FAILURE;
            }
        }
    }
    let [lazy, forced, plain] = [more[0], more[1], more[2]];
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            r.check("rf-listen", false, e.to_string(), &[]);
            return ExitCode::FAILURE;
        }
    };
    println!("fork-parent: waiting for guest B on port {port}");
    let Ok((stream, _)) = listener.accept() else {
        return ExitCode::FAILURE;
    };
    let mut out = stream.try_clone().expect("clone stream");
    let _ = writeln!(out, "handle {}", p.handle);
    let _ = writeln!(out, "lazy {lazy}");
    let _ = writeln!(out, "forced {forced}");
    let _ = writeln!(out, "sparse {}", w.sparse as usize);
    // A dynamically linked program prepared through the C ABI (shared-library text
    // and data); its children run on B.
    let dyn_handle = Command::new("fork-dyn")
        .stdout(Stdio::piped())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("HANDLE ").map(String::from))
        });
    r.check(
        "rf-dyn-prepare",
        dyn_handle.is_some(),
        format!("{dyn_handle:?}"),
        &[],
    );
    let _ = writeln!(out, "dyn {}", dyn_handle.unwrap_or_default());
    let _ = writeln!(out, "plain {plain}");
    // Local children, concurrently with B's.
    let t = Instant::now();
    let kids: Vec<_> = (0..n_local)
        .filter_map(|i| {
            launch(&p.handle, false)
                .ok()
                .map(|c| (c, format!("verify {}", 100 + i)))
        })
        .collect();
    let launched = kids.len();
    let ok = run_children(kids)
        .iter()
        .filter(|(st, _)| status_ok(st))
        .count();
    r.check(
        "rf-local-children",
        launched == n_local && ok == n_local,
        format!("{ok}/{n_local} children on A verified"),
        &[
            ("children", n_local as f64),
            ("wall_ms", t.elapsed().as_secs_f64() * 1e3),
        ],
    );
    let mut lines = BufReader::new(stream).lines();
    while let Some(Ok(line)) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["hop", h] => {
                let res = h.parse::<SnapshotHandle>().and_then(|h| launch(&h, false));
                let good = match res {
                    Ok(c) => status_ok(&run_child(c, "go").0),
                    Err(_) => false,
                };
                r.check("rf-two-hop-on-a", good, format!("grandchild of {h}"), &[]);
                let _ = writeln!(out, "hop-done {}", good as u8);
            }
            ["release"] => {
                // B has a child of it running: B's host holds an open.
                check_list(r, &m, p.handle.id);
                let rel = m.fork_release(&p.handle, false);
                r.check("rf-release", rel.is_ok(), format!("{rel:?}"), &[]);
                let listed = m.snapshots().map(|v| v.iter().any(|e| e.id == p.handle.id));
                r.check(
                    "rf-list-drops-released",
                    matches!(listed, Ok(false)),
                    format!("{listed:?}"),
                    &[],
                );
                let again = m
                    .fork_release(&p.handle, false)
                    .err()
                    .and_then(|e| e.raw_os_error());
                r.check(
                    "rf-release-twice-enoent",
                    again == Some(libc::ENOENT),
                    format!("{again:?}"),
                    &[],
                );
                let _ = writeln!(out, "released");
            }
            ["release-plain"] => {
                let rel = m.fork_release(&plain, false);
                r.check("rf-release-plain", rel.is_ok(), format!("{rel:?}"), &[]);
                let _ = writeln!(out, "released");
            }
            ["force-release", h] => {
                // The third snapshot (a child waits on B), or the C program's.
                let rel = h
                    .parse::<SnapshotHandle>()
                    .map_err(|e| e.to_string())
                    .and_then(|h| m.fork_release(&h, true).map_err(|e| e.to_string()));
                let name = if *h == forced.to_string() {
                    "rf-force-release"
                } else {
                    "rf-force-release-dyn"
                };
                r.check(name, rel.is_ok(), format!("{rel:?}"), &[]);
                let _ = writeln!(out, "force-released");
            }
            ["bye"] => break,
            _ => println!("fork-parent: unexpected {line:?}"),
        }
    }
    verify_parent(r, &w);
    drop(m);
    ExitCode::SUCCESS
}

/// `mitosis list` on the parent's host: the snapshot with its pages, descriptor and the
/// peer host reading it, through the library and through the CLI's JSON.
fn check_list(r: &mut Report, m: &Mitosis, id: u64) {
    let entry = m
        .snapshots()
        .ok()
        .and_then(|v| v.into_iter().find(|e| e.id == id));
    r.check(
        "rf-list-shows-snapshot",
        matches!(entry, Some(e) if e.pages > 0 && e.desc_bytes > 0 && e.peers >= 1),
        format!("{entry:?}"),
        &[],
    );
    let cli = Command::new("mitosis").args(["list", "--json"]).output();
    let text = cli
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ok = matches!(&cli, Ok(o) if o.status.success())
        && text.starts_with('[')
        && text.contains(&format!("\"id\":{id},"))
        && text.contains(&format!("/{id}\""));
    r.check("rf-cli-list-json", ok, text.trim(), &[]);
}

/// Launches a child with the "lazy" task and waits for its READY line.
pub(super) fn start_lazy(h: &SnapshotHandle) -> Option<Child> {
    let mut c = launch(h, false).ok()?;
    if let Some(i) = c.stdin.as_mut() {
        let _ = writeln!(i, "lazy");
    }
    let mut line = String::new();
    if let Some(o) = c.stdout.as_mut() {
        let mut b = [0u8; 1];
        while let Ok(1) = o.read(&mut b) {
            if b[0] == b'\n' {
                break;
            }
            line.push(b[0] as char);
        }
    }
    (line == "READY").then_some(c)
}

/// Tells a lazy child to touch everything; returns the signal that ended it.
pub(super) fn finish_lazy(mut c: Child) -> Option<i32> {
    if let Some(i) = c.stdin.as_mut() {
        let _ = writeln!(i, "go");
    }
    let _ = echo_all(&mut c);
    use std::os::unix::process::ExitStatusExt;
    c.wait().ok().and_then(|st| st.signal())
}
