//! The adversarial scenario, driven from guest B against the module on guest A (which
//! runs the agent): what a hostile network peer, a hostile parent and a hostile local
//! caller can do must end in refusals, bounded waits and a healthy host.
//!
//! - network: half-open connection floods (bounded per peer, reaped after the
//!   handshake timeout), malformed and truncated control messages, opens with wrong
//!   secrets in a loop (log lines rate-limited), a guessed key and address; a connect to a
//!   silent address does not hold up other users;
//! - parent: `hostile-peer serve` (user-space rdma-core on B) plays a parent serving a
//!   copy of a real snapshot of A's agent, first unchanged (A's resume must produce a
//!   child: proof that the harness reaches the module), then with one hostile change
//!   each (overflowing counts and offsets, addresses outside user space, kernel-only
//!   signal flags, a malformed rseq, bad FPU images, a bad checksum); each resume on A
//!   must fail with its errno, the launcher intact; a parent that never answers makes
//!   the resume time out.
//!
//! The hostile peer is `tests/guest/c/hostile_peer.c`.

use crate::agent::RESUMED_AGENT_EXIT;
use crate::driver::{run_sh, Agent};
use crate::report::Report;
use mitosis::{format_secret, Mitosis, RegionId, ResumeOptions, SnapshotHandle};
use mitosis_abi::ioctl::Pod;
use mitosis_abi::packed;
use mitosis_abi::snapshot::{
    self, reg, window_offset, Descriptor, FileRef, PageRun, TaskState, Vma, RUN_PRESENT,
    TASK_STATE_LEN,
};
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
/// The module's listener port on A.
const MODULE_PORT: u16 = 18515;
/// First port of the hostile parents on B.
const HOSTILE_PORT: u16 = 18600;
const HOSTILE_PEER: &str = "/bin/hostile-peer";

/// One hostile change to a real snapshot, and the errno A's resume must fail with
/// (`None`: the resume must succeed).
struct Variant {
    name: &'static str,
    errno: Option<i32>,
    change: fn(&mut Parts),
}

/// A snapshot taken apart: what the descriptor says and the page data after it.
struct Parts {
    vmas: Vec<Vma>,
    runs: Vec<PageRun>,
    files: Vec<FileRef>,
    data_pages: u64,
    st: TaskState,
    fpu: Vec<u8>,
    /// Flip a byte of the encoded descriptor (after the header) to break its checksum.
    corrupt_byte: bool,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "control",
        errno: None,
        change: |_| {},
    },
    Variant {
        name: "capture-args-overflow",
        errno: Some(libc::EBADMSG),
        change: |p| p.st.capture_args = u64::MAX - 7,
    },
    Variant {
        name: "kernel-ip",
        errno: Some(libc::EBADMSG),
        change: |p| p.st.regs[reg::IP] = 0xffff_ffff_8100_0000,
    },
    Variant {
        name: "vma-in-kernel-space",
        errno: Some(libc::EBADMSG),
        change: |p| {
            if let Some(v) = p.vmas.last_mut() {
                let len = v.end - v.start;
                v.start = 0xffff_8000_0000_0000;
                v.end = v.start + len;
            }
        },
    },
    Variant {
        name: "data-past-region",
        errno: Some(libc::EBADMSG),
        change: |p| p.data_pages += 1 << 20,
    },
    Variant {
        name: "run-data-overflow",
        errno: Some(libc::EBADMSG),
        change: |p| {
            if let Some(r) = p.runs.iter_mut().find(|r| r.kind == snapshot::RUN_PRESENT) {
                r.data_page = u64::MAX - 1;
            }
        },
    },
    Variant {
        name: "sa-immutable",
        errno: Some(libc::EBADMSG),
        change: |p| p.st.sigactions[9].flags |= 0x0080_0000,
    },
    Variant {
        name: "rseq-misaligned",
        errno: Some(libc::EBADMSG),
        change: |p| {
            p.st.rseq = if p.st.rseq != 0 {
                p.st.rseq + 8
            } else {
                0x1_0008
            };
            p.st.rseq_len = p.st.rseq_len.max(32);
        },
    },
    Variant {
        name: "args-reversed",
        errno: Some(libc::EBADMSG),
        change: |p| p.st.arg_end = p.st.arg_start.saturating_sub(1),
    },
    Variant {
        name: "xsave-supervisor-pasid",
        errno: Some(libc::EOPNOTSUPP),
        // Component 10 (PASID, supervisor state) in XSTATE_BV: byte 513, bit 2.
        change: |p| p.fpu[513] |= 1 << 2,
    },
    Variant {
        name: "xsave-mxcsr-reserved",
        errno: Some(libc::EOPNOTSUPP),
        change: |p| p.fpu[24..28].copy_from_slice(&u32::MAX.to_le_bytes()),
    },
    Variant {
        name: "xsave-header-reserved",
        errno: Some(libc::EOPNOTSUPP),
        change: |p| p.fpu[540] = 1,
    },
    Variant {
        name: "fpu-short",
        errno: Some(libc::EOPNOTSUPP),
        change: |p| {
            p.fpu.truncate(p.fpu.len() - 64);
            p.st.fpu_len = p.fpu.len() as u32;
        },
    },
    Variant {
        name: "file-id-unknown",
        errno: Some(libc::EBADMSG),
        change: |p| {
            let n = p.files.len() as u32;
            if let Some(v) = p.vmas.iter_mut().find(|v| v.file_id != 0) {
                v.file_id = n + 1;
            }
        },
    },
    Variant {
        // Every recorded file names a FIFO on the child's host: opening it must not
        // block, it is refused as not a regular file, and the child runs from the
        // snapshot's pages.
        name: "file-path-fifo",
        errno: None,
        change: |p| {
            for f in p.files.iter_mut() {
                if let Some(g) = FileRef::new(ADV_FIFO.as_bytes(), f.size, f.mtime_sec, f.head_hash)
                {
                    *f = g;
                }
            }
        },
    },
    Variant {
        name: "bad-checksum",
        errno: Some(libc::EBADMSG),
        change: |p| p.corrupt_byte = true,
    },
];

/// The descriptor of a snapshot region (its first pages), and its length.
fn descriptor_of(region: &[u8]) -> Result<(Descriptor<'_>, usize), String> {
    let len = region
        .get(8..12)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .ok_or("short region")?;
    let d = Descriptor::parse(region.get(..len).ok_or("short region")?)
        .map_err(|e| format!("descriptor: {e:?}"))?;
    Ok((d, len))
}

/// Takes a snapshot region (descriptor pages, then data pages) apart.
fn take_apart(region: &[u8]) -> Result<(Parts, &[u8]), String> {
    let (d, len) = descriptor_of(region)?;
    let vmas = (0..d.n_vmas()).filter_map(|i| d.vma(i)).collect();
    let runs = (0..d.n_runs()).filter_map(|i| d.run(i)).collect();
    let files = (1..=d.n_files() as u32).filter_map(|i| d.file(i)).collect();
    let st = TaskState::from_bytes(d.state()).ok_or("short state")?;
    let fpu = d.state()[TASK_STATE_LEN..].to_vec();
    let data = &region[len.div_ceil(PAGE) * PAGE..];
    Ok((
        Parts {
            vmas,
            runs,
            files,
            data_pages: d.data_pages,
            st,
            fpu,
            corrupt_byte: false,
        },
        data,
    ))
}

/// Puts a (changed) snapshot back together as the region a parent would publish.
fn put_together(p: &Parts, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut state = p.st.as_bytes().to_vec();
    state.extend_from_slice(&p.fpu);
    let mut desc = vec![0u8; 64 << 20];
    let n =
        snapshot::encode_with_files(&p.vmas, &p.runs, &p.files, p.data_pages, &state, &mut desc)
            .map_err(|e| format!("encode: {e:?}"))?;
    desc.truncate(n);
    if p.corrupt_byte {
        desc[snapshot::HEADER_LEN + 3] ^= 0x40;
    }
    desc.resize(n.div_ceil(PAGE) * PAGE, 0);
    desc.extend_from_slice(data);
    Ok(desc)
}

/// A packed copy of the working set (abi/src/packed.rs) that lies about every page:
/// for the first 48 present pages of `p`, streams that do not decompress to a page
/// (alternately bytes of no LZO stream, and a valid stream of one byte), then a page
/// of a VMA the snapshot does not have, stored whole, and the first page again.
fn lying_packed_copy(p: &Parts) -> Vec<u8> {
    let mut present = present_indices(p);
    present.truncate(48);
    let garbage: Vec<u8> = (0..100u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let one_byte = [0x12, b'A', 0x11, 0, 0];
    let mut pages: Vec<(u64, &[u8])> = present
        .iter()
        .enumerate()
        .map(|(i, &index)| {
            (
                index,
                if i % 2 == 0 {
                    &garbage[..]
                } else {
                    &one_byte[..]
                },
            )
        })
        .collect();
    let stray = vec![0x5a; PAGE];
    pages.push((window_offset(60000) / PAGE as u64, &stray));
    if let Some(&first) = present.first() {
        pages.push((first, &garbage));
    }
    packed_copy_of(&pages).unwrap_or_default()
}

/// The page-cache index of every present page of `p`, in descriptor order.
fn present_indices(p: &Parts) -> Vec<u64> {
    let mut present = Vec::new();
    for (vi, v) in p.vmas.iter().enumerate() {
        let runs = p
            .runs
            .iter()
            .skip(v.first_run as usize)
            .take(v.n_runs as usize);
        for run in runs.filter(|r| r.kind == RUN_PRESENT) {
            for k in 0..u64::from(run.n_pages) {
                present.push(window_offset(vi) / PAGE as u64 + run.page + k);
            }
        }
    }
    present
}

/// A packed copy of `pages` (page-cache index, encoding), as a parent writes one.
fn packed_copy_of(pages: &[(u64, &[u8])]) -> Result<Vec<u8>, String> {
    let mut w = packed::PackedWriter::new(pages.len()).ok_or("too many pages")?;
    let mut out = vec![0u8; w.header_len()];
    for (i, (index, enc)) in pages.iter().enumerate() {
        w.entry(&mut out, i, *index, enc.len()).ok_or("bad entry")?;
    }
    for (_, enc) in pages {
        out.extend_from_slice(enc);
    }
    w.finish(&mut out).ok_or("unfinished copy")?;
    Ok(out)
}

/// A packed copy that tells the truth about the first `max` present pages of the
/// snapshot `region` (descriptor pages, then data pages), each stored as it is: long
/// enough to take several doorbells to read.
fn truthful_packed_copy(region: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let (p, data) = take_apart(region)?;
    let (d, _) = descriptor_of(region)?;
    let mut pages: Vec<(u64, &[u8])> = Vec::new();
    for index in present_indices(&p).into_iter().take(max) {
        let off = d
            .data_offset_at(index * PAGE as u64)
            .ok_or("a present page without data")? as usize;
        pages.push((
            index,
            data.get(off..off + PAGE).ok_or("data past the region")?,
        ));
    }
    packed_copy_of(&pages)
}

/// A FIFO on the child's host that a hostile descriptor names as a mapped file.
const ADV_FIFO: &str = "/tmp/adv-fifo";

/// A running `hostile-peer serve`, killed on drop.
struct HostileParent(Child);

/// The secret in the handles of hostile parents (which know it, as a parent does).
const HOSTILE_SECRET: [u8; 16] = [0x11; 16];
/// The module's parameters (writable ones are changed at run time).
const PARAMS: &str = "/sys/module/mitosis/parameters/";

impl HostileParent {
    /// Serves `file` on `port`, its descriptor MAC made with `secret`; `mode` is
    /// `hostile-peer serve`'s last argument ("silent", "lying-ws"), if any.
    fn start(port: u16, file: &str, secret: &[u8; 16], mode: Option<&str>) -> Result<Self, String> {
        let mut cmd = Command::new(HOSTILE_PEER);
        cmd.args(["serve", &port.to_string(), file, &format_secret(secret)]);
        if let Some(mode) = mode {
            cmd.arg(mode);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{HOSTILE_PEER}: {e}"))?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        print!("{line}");
        if !line.contains("serving") {
            let _ = child.kill();
            return Err(format!("hostile parent did not start: {line:?}"));
        }
        Ok(HostileParent(child))
    }
}

impl Drop for HostileParent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `hostile-peer ARGS...`; returns its exit status and its RESULT line.
fn hostile_peer(args: &[&str]) -> (i32, String) {
    println!("adversarial: hostile-peer {}", args.join(" "));
    match Command::new(HOSTILE_PEER).args(args).output() {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            eprint!("{}", String::from_utf8_lossy(&o.stderr));
            let result = text
                .lines()
                .find(|l| l.contains("RESULT"))
                .unwrap_or("")
                .to_string();
            println!("{}", result);
            (o.status.code().unwrap_or(-1), result)
        }
        Err(e) => (-1, format!("{HOSTILE_PEER}: {e}")),
    }
}

/// `key=N` from a RESULT line.
fn field(line: &str, key: &str) -> Option<i64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// Reads a whole region of A (a snapshot is a region: descriptor first).
fn read_region(m: &Mitosis, peer: Ipv4Addr, id: u64, secret: [u8; 16]) -> Result<Vec<u8>, String> {
    let x = m
        .remote_open(peer, 0, RegionId { id, secret }, None)
        .map_err(|e| format!("open: {e}"))?;
    let mut buf = vec![0u8; x.size as usize];
    let r = m.remote_read(x.handle, 0, &mut buf, 64, 0);
    let _ = m.remote_close(x.handle);
    r.map_err(|e| format!("read: {e}"))?;
    Ok(buf)
}

/// On B: every adversarial check against A (`peer`); `me` is B's address.
pub fn drive(r: &mut Report, peer: Ipv4Addr, me: Ipv4Addr) -> ExitCode {
    let mut agent = match Agent::connect(peer, crate::AGENT_PORT) {
        Ok(a) => a,
        Err(e) => {
            r.check("adv-agent-reachable", false, e.to_string(), &[]);
            return ExitCode::FAILURE;
        }
    };
    let m = match Mitosis::open() {
        Ok(m) => m,
        Err(e) => {
            r.check("adv-device", false, e.to_string(), &[]);
            return ExitCode::FAILURE;
        }
    };
    network(r, &m, &mut agent, peer);
    let handle = hostile_parents(r, &m, &mut agent, peer, me);
    // Allocation failures over resume and the child's faults, from A's real snapshot.
    match &handle {
        Some(h) => {
            fault_inject(r, "resume", Some(&h.to_string()));
        }
        None => {
            r.check("adv-fault-inject-resume", false, "no snapshot of A", &[]);
        }
    }
    late_read_responses(r, &mut agent, &m);
    device_removed_under_child(r, &mut agent);
    // Random ioctls on both hosts' modules (after the rest: the module must still
    // answer, and the run must stay free of kernel reports).
    let local = Command::new("/bin/mitosis-test")
        .args(["ioctl-fuzz", "20000"])
        .status()
        .map(|s| s.success());
    let remote = agent.sh("mitosis-test ioctl-fuzz 10000 7");
    r.check(
        "adv-ioctl-fuzz",
        matches!(local, Ok(true)) && remote == Ok(0),
        format!("20000 on B: {local:?}; 10000 on A: {remote:?}"),
        &[],
    );
    let _ = agent.call("quit");
    ExitCode::SUCCESS
}

/// The network side: garbage, wrong secrets, keys, floods, a silent address.
fn network(r: &mut Report, m: &Mitosis, agent: &mut Agent, peer: Ipv4Addr) {
    let a = peer.to_string();
    let port = MODULE_PORT.to_string();
    // Malformed messages, wrong secrets, a guessed key, a guessed address.
    let region = agent.create(1 << 20, 5);
    let started = std::time::Instant::now();
    let (code, line) = match &region {
        Ok(reg) => hostile_peer(&[
            "garbage",
            &a,
            &port,
            &reg.id.to_string(),
            &format_secret(&reg.secret),
            "200",
        ]),
        Err(e) => (-1, e.clone()),
    };
    r.check(
        "adv-garbage-messages-dropped",
        code == 0 && field(&line, "garbage_sent") == Some(11),
        &line,
        &[],
    );
    r.check(
        "adv-wrong-secrets-refused",
        line.contains("wrong_secret_eacces=200/200") && field(&line, "unknown_eacces") == Some(1),
        &line,
        &[],
    );
    r.check(
        "adv-guessed-key-refused",
        field(&line, "guessed_key_refused") == Some(1) && field(&line, "read_ok") == Some(1),
        &line,
        &[],
    );
    r.check(
        "adv-second-open-shares-keys",
        field(&line, "shared_keys") == Some(1),
        &line,
        &[],
    );
    r.check(
        "adv-wrong-address-refused",
        field(&line, "wrong_address_refused") == Some(1),
        &line,
        &[],
    );
    // The module logs at most 16 lines a second per kind: whatever the 200 wrong
    // secrets took (longer on a slow KASAN guest), the lines stay within the seconds
    // they spanned (plus the window they started in) and well below 200.
    let allowed = 16 * (started.elapsed().as_secs() + 2).min(10);
    let logged = agent.sh(&format!(
        "n=$(dmesg | grep -c 'gave a wrong secret'); echo \"wrong-secret log lines: $n (allowed {allowed})\"; [ \"$n\" -le {allowed} ]"
    ));
    r.check(
        "adv-peer-logs-rate-limited",
        logged == Ok(0),
        format!("{logged:?}, at most {allowed} allowed"),
        &[],
    );
    // The host still serves an honest open and read after all that.
    let honest = region.map_err(|e| e.to_string()).and_then(|reg| {
        m.remote_open(peer, 0, reg, None)
            .map_err(|e| e.to_string())
            .and_then(|x| {
                let mut page = vec![0u8; PAGE];
                m.remote_read(x.handle, 0, &mut page, 1, 0)
                    .map_err(|e| e.to_string())?;
                match mitosis_abi::ioctl::check_pattern(5, 0, &page) {
                    None => Ok(()),
                    Some(w) => Err(format!("word {w} differs")),
                }
            })
    });
    r.check(
        "adv-honest-open-after-garbage",
        honest.is_ok(),
        format!("{honest:?}"),
        &[],
    );

    // Half-open flood: at most 8 unauthenticated connections per peer address.
    let (code, line) = hostile_peer(&["flood", &a, &port, "32", "0"]);
    let answered = field(&line, "answered").unwrap_or(-1);
    let refused = field(&line, "refused").unwrap_or(-1);
    r.check(
        "adv-flood-bounded-per-peer",
        code == 0 && (1..=8).contains(&answered) && refused >= 24,
        &line,
        &[("answered", answered as f64), ("refused", refused as f64)],
    );
    // Stale handshakes are reaped: while a flood holds 8 half-open connections past
    // A's handshake timeout (1 s in this scenario), new ones are answered again.
    let holder = Command::new(HOSTILE_PEER)
        .args(["flood", &a, &port, "8", "6000"])
        .stdout(Stdio::piped())
        .spawn();
    std::thread::sleep(Duration::from_millis(3000));
    let (_, line2) = hostile_peer(&["flood", &a, &port, "4", "0"]);
    let holder_line = holder
        .ok()
        .and_then(|c| c.wait_with_output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    print!("{holder_line}");
    r.check(
        "adv-stale-handshakes-reaped",
        field(&line2, "answered").unwrap_or(0) >= 1,
        format!("second wave: {line2}; holder: {}", holder_line.trim()),
        &[],
    );
    let status_ok = agent.sh("mitosis status");
    r.check(
        "adv-host-up-after-floods",
        status_ok == Ok(0),
        format!("{status_ok:?}"),
        &[],
    );

    // A connect to an address nobody answers does not hold up other users.
    let silent = std::thread::spawn(|| {
        let t = Instant::now();
        let e = Mitosis::open().and_then(|m| {
            m.remote_open(
                Ipv4Addr::new(169, 254, 77, 250),
                0,
                RegionId {
                    id: 1,
                    secret: [0; 16],
                },
                Some(Duration::from_millis(4000)),
            )
        });
        (t.elapsed(), e.err().and_then(|e| e.raw_os_error()))
    });
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let other = agent
        .create(64 << 10, 6)
        .and_then(|reg| m.remote_open(peer, 0, reg, None).map_err(|e| e.to_string()));
    let other_ms = t.elapsed().as_secs_f64() * 1e3;
    let (silent_t, silent_errno) = silent.join().unwrap_or((Duration::ZERO, None));
    r.check(
        "adv-silent-connect-does-not-block-others",
        other.is_ok() && other_ms < 2000.0 && silent_errno.is_some(),
        format!(
            "other open {other_ms:.0} ms ({:?}); silent connect ended after {} ms with {silent_errno:?}",
            other.as_ref().map(|_| ()),
            silent_t.as_millis()
        ),
        &[("other_open_ms", other_ms), ("silent_ms", silent_t.as_secs_f64() * 1e3)],
    );
}

/// Hostile parents on B, resumed from on A.
/// Returns the handle of A's real snapshot, for later checks.
fn hostile_parents(
    r: &mut Report,
    m: &Mitosis,
    agent: &mut Agent,
    peer: Ipv4Addr,
    me: Ipv4Addr,
) -> Option<SnapshotHandle> {
    let handle: Result<SnapshotHandle, String> = agent.call("prepare").and_then(|w| {
        w.first()
            .ok_or("no handle".into())
            .and_then(|h| h.parse().map_err(|e: std::io::Error| e.to_string()))
    });
    let region = handle
        .as_ref()
        .map_err(|e| e.clone())
        .and_then(|h| read_region(m, peer, h.id, h.secret));
    let apart = region.as_ref().map_err(|e| e.clone()).and_then(|reg| {
        let (parts, data) = take_apart(reg)?;
        Ok((parts, data.to_vec()))
    });
    let Ok((base, data)) = apart else {
        r.check(
            "adv-parent-snapshot-copied",
            false,
            format!("{:?}", apart.err()),
            &[],
        );
        return handle.ok();
    };
    // The seed's executable is a clean file mapping: at least one file record.
    r.check(
        "adv-parent-snapshot-copied",
        !base.files.is_empty(),
        format!(
            "{} VMAs, {} runs, {} file records, {} data pages",
            base.vmas.len(),
            base.runs.len(),
            base.files.len(),
            base.data_pages
        ),
        &[],
    );
    let fifo = agent.sh(&format!("rm -f {ADV_FIFO}; /bin/busybox mkfifo {ADV_FIFO}"));
    r.check(
        "adv-agent-fifo",
        matches!(fifo, Ok(0)),
        format!("mkfifo {ADV_FIFO} on the child's host: {fifo:?}"),
        &[],
    );
    // Control first and last: the harness reaches the module, and the host is healthy
    // after every hostile parent.
    let order = VARIANTS.iter().chain(VARIANTS.iter().take(1));
    for (i, v) in order.enumerate() {
        let mut parts = Parts {
            vmas: base.vmas.clone(),
            runs: base.runs.clone(),
            files: base.files.clone(),
            data_pages: base.data_pages,
            st: base.st,
            fpu: base.fpu.clone(),
            corrupt_byte: false,
        };
        (v.change)(&mut parts);
        let port = HOSTILE_PORT + i as u16;
        let file = format!("/tmp/adv-{}.bin", v.name);
        let name = if i < VARIANTS.len() {
            format!("adv-parent-{}", v.name)
        } else {
            "adv-parent-control-after-all".to_string()
        };
        let outcome = put_together(&parts, &data)
            .and_then(|bytes| std::fs::write(&file, bytes).map_err(|e| e.to_string()))
            .and_then(|()| HostileParent::start(port, &file, &HOSTILE_SECRET, None))
            .and_then(|_parent| {
                let h = format!("{me}:{port}/1/{}", format_secret(&HOSTILE_SECRET));
                let expect = v.errno.map_or("child".to_string(), |e| e.to_string());
                let t = Instant::now();
                let rc = agent.sh(&format!("mitosis-test resume-expect {h} {expect}"))?;
                Ok((rc, t.elapsed()))
            });
        let want = if v.errno.is_some() {
            0
        } else {
            RESUMED_AGENT_EXIT
        };
        r.check(
            &name,
            matches!(outcome, Ok((rc, _)) if rc == want),
            format!("{outcome:?}, want exit {want}"),
            &[],
        );
    }
    // A parent that accepts and never answers: the resume times out, bounded.
    let outcome = put_together(&base, &data)
        .and_then(|bytes| std::fs::write("/tmp/adv-silent.bin", bytes).map_err(|e| e.to_string()))
        .and_then(|()| {
            HostileParent::start(
                HOSTILE_PORT + 99,
                "/tmp/adv-silent.bin",
                &HOSTILE_SECRET,
                Some("silent"),
            )
        })
        .and_then(|_parent| {
            let h = format!(
                "{me}:{}/1/{}",
                HOSTILE_PORT + 99,
                format_secret(&HOSTILE_SECRET)
            );
            let t = Instant::now();
            let rc = agent.sh(&format!(
                "mitosis-test resume-expect {h} {}",
                libc::ETIMEDOUT
            ))?;
            Ok((rc, t.elapsed()))
        });
    // A peer that does not hold the snapshot's secret serves an intact copy: its
    // descriptor MAC is wrong, so the child refuses it before using any of it.
    let port = HOSTILE_PORT + 98;
    let no_secret = put_together(&base, &data)
        .and_then(|bytes| std::fs::write("/tmp/adv-nosecret.bin", bytes).map_err(|e| e.to_string()))
        .and_then(|()| HostileParent::start(port, "/tmp/adv-nosecret.bin", &[0x22; 16], None))
        .and_then(|_parent| {
            let h = format!("{me}:{port}/1/{}", format_secret(&HOSTILE_SECRET));
            agent.sh(&format!("mitosis-test resume-expect {h} {}", libc::EBADMSG))
        });
    // An intact snapshot whose parent hands out a working set naming pages the
    // snapshot does not have, and first-touch pages at the descriptor, past the
    // region and where the descriptor puts nothing: the child reads only present
    // pages of the region's data and keeps only those its descriptor confirms.
    let port = HOSTILE_PORT + 97;
    let lying = put_together(&base, &data)
        .and_then(|bytes| std::fs::write("/tmp/adv-lying-ws.bin", bytes).map_err(|e| e.to_string()))
        .and_then(|()| {
            HostileParent::start(
                port,
                "/tmp/adv-lying-ws.bin",
                &HOSTILE_SECRET,
                Some("lying-ws"),
            )
        })
        .map(|_parent| {
            let h = format!("{me}:{port}/1/{}", format_secret(&HOSTILE_SECRET));
            let first = agent.sh(&format!("mitosis-test resume-expect {h} child"));
            // Its first-touch pages: the one inside the region was read with the
            // descriptor and then dropped, as the descriptor does not put it there.
            let dropped =
                agent.sh("dmesg | grep -q 'first-touch pages do not match the descriptor'");
            // The parent's record again (not the host's own, `working_set=2`), read in
            // the background (`replay_async`): the child exits at once, the replay
            // stops behind it, and the next resume works.
            let background = agent
                .sh(&format!(
                    "echo 1 > {PARAMS}replay_async && echo 2 > {PARAMS}working_set"
                ))
                .and_then(|_| agent.sh(&format!("mitosis-test resume-expect {h} child")));
            let again = agent.sh(&format!("mitosis-test resume-expect {h} child"));
            let _ = agent.sh(&format!(
                "echo 0 > {PARAMS}replay_async; echo 1 > {PARAMS}working_set"
            ));
            (first, dropped, background, again)
        });
    // Parents granting a packed copy of the working set that lies: every page it
    // holds for a present page of the snapshot is a stream that does not decompress
    // to a whole page (garbage, or one byte), plus a page of a VMA the snapshot does
    // not have and a page named twice; and a copy whose header is not one. The child
    // refuses each (a log line says so) and faults the pages in from the region.
    let packed = [
        (
            "adv-parent-lying-packed-copy",
            lying_packed_copy(&base),
            "pages of its packed working set refused",
        ),
        (
            "adv-parent-malformed-packed-copy",
            {
                let mut c = lying_packed_copy(&base);
                c[0] ^= 0xff;
                c
            },
            "its packed working set is malformed",
        ),
    ];
    for (i, (name, copy, logged)) in packed.iter().enumerate() {
        let port = HOSTILE_PORT + 95 - i as u16;
        let region_file = format!("/tmp/{name}.bin");
        let copy_file = format!("/tmp/{name}.copy");
        let outcome = put_together(&base, &data)
            .and_then(|bytes| std::fs::write(&region_file, bytes).map_err(|e| e.to_string()))
            .and_then(|()| std::fs::write(&copy_file, copy).map_err(|e| e.to_string()))
            .and_then(|()| {
                HostileParent::start(
                    port,
                    &region_file,
                    &HOSTILE_SECRET,
                    Some(&format!("packed={copy_file}")),
                )
            })
            .map(|_parent| {
                let h = format!("{me}:{port}/1/{}", format_secret(&HOSTILE_SECRET));
                let child = agent.sh(&format!("mitosis-test resume-expect {h} child"));
                let log = agent.sh(&format!(
                    "dmesg | grep 'packed working set' | grep -q '{logged}'"
                ));
                (child, log)
            });
        r.check(
            name,
            matches!(&outcome, Ok((Ok(rc), Ok(0))) if *rc == RESUMED_AGENT_EXIT),
            format!("{outcome:?}, want exit {RESUMED_AGENT_EXIT} and a log line with `{logged}`"),
            &[],
        );
    }
    // A parent whose packed copy ends short of the pages it announced: the child
    // reads it several doorbells deep, the READs past its end fail while others are
    // in flight, and the connection fails with them (their pages stay the
    // connection's until its QP is drained: the KASAN run checks it). The child's host
    // then reconnects to go on with faults; this parent refuses the new connection
    // (it serves one at a time), so the resume kills its caller, as it does whenever
    // the parent is gone once the address space was replaced: exit 42 if it got
    // through anyway, else killed (-1). Either way a READ error is counted there, and
    // the host goes on (the checks after this one).
    // The child runs on the agent's host: its READ errors are counted there.
    let read_errors = "mitosis status --json | grep -o '\"read_errors\":[0-9]*' | cut -d: -f2";
    let before = agent.sh(&format!("{read_errors} > /tmp/adv-read-errors"));
    let short = put_together(&base, &data).and_then(|region| {
        let copy = truthful_packed_copy(&region, 256)?;
        let (region_file, copy_file) = ("/tmp/adv-short-copy.bin", "/tmp/adv-short-copy.copy");
        std::fs::write(region_file, &region).map_err(|e| e.to_string())?;
        std::fs::write(copy_file, &copy).map_err(|e| e.to_string())?;
        let port = HOSTILE_PORT + 93;
        let _parent = HostileParent::start(
            port,
            region_file,
            &HOSTILE_SECRET,
            Some(&format!("packed-short={copy_file}")),
        )?;
        let h = format!("{me}:{port}/1/{}", format_secret(&HOSTILE_SECRET));
        Ok((
            copy.len().div_ceil(PAGE),
            agent.sh(&format!("mitosis-test resume-expect {h} child")),
        ))
    });
    let failed = agent.sh(&format!(
        "[ $({read_errors}) -gt $(cat /tmp/adv-read-errors) ]"
    ));
    r.check(
        "adv-parent-short-packed-copy",
        matches!(&short, Ok((pages, Ok(rc)))
            if *pages > 2 * 64 && (*rc == RESUMED_AGENT_EXIT || *rc == -1))
            && matches!(before, Ok(0))
            && matches!(failed, Ok(0)),
        format!(
            "{short:?} (copy pages, child), want more than two doorbells of pages and exit \
             {RESUMED_AGENT_EXIT} or killed (-1); a READ error counted on the child's host: \
             {failed:?} (0: yes)"
        ),
        &[],
    );
    let want = |rc: &Result<i32, String>| matches!(rc, Ok(rc) if *rc == RESUMED_AGENT_EXIT);
    r.check(
        "adv-parent-lying-working-set",
        matches!(&lying, Ok((first, Ok(0), _, _)) if want(first)),
        format!("{lying:?}, want exit {RESUMED_AGENT_EXIT} and the first-touch pages dropped"),
        &[],
    );
    r.check(
        "adv-parent-lying-working-set-background",
        matches!(&lying, Ok((_, _, background, again)) if want(background) && want(again)),
        format!("{lying:?}, want exit {RESUMED_AGENT_EXIT} twice (background replay, then again)"),
        &[],
    );
    r.check(
        "adv-parent-without-secret-refused",
        matches!(no_secret, Ok(0)),
        format!("{no_secret:?}, want EBADMSG"),
        &[],
    );
    r.check(
        "adv-parent-silent-times-out",
        matches!(outcome, Ok((0, t)) if t < Duration::from_secs(20)),
        format!("{outcome:?}"),
        &[],
    );
    handle.ok()
}

/// `mitosis-test resume-expect HANDLE ERRNO|child`: resumes from HANDLE; exits 0 if
/// the resume failed with ERRNO (the launcher intact), 1 otherwise. With `child`, a
/// successful resume ends in the seed's own exit status.
pub fn resume_expect(handle: &str, expect: &str) -> ExitCode {
    let h: SnapshotHandle = match handle.parse() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("resume-expect: {e}");
            return ExitCode::from(2);
        }
    };
    let e = match Mitosis::open() {
        Ok(m) => m.fork_resume(&h, ResumeOptions::default()),
        Err(e) => e,
    };
    let want: Option<i32> = expect.parse().ok();
    println!("resume-expect: {handle}: {e} (want {expect})");
    if want.is_some() && e.raw_os_error() == want {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// `mitosis-test ioctl-fuzz ITERATIONS [SEED]`: random ioctls on `/dev/mitosis`: known
/// and unknown numbers, right and wrong sizes and directions, valid and garbage
/// headers, random fields, null and kernel pointers. Runs in forked children (a
/// capture that happens to validate ends its caller, as it must). Exits 0 if the
/// module still answers afterwards; a splat fails the whole guest run.
pub fn ioctl_fuzz(iterations: u64, seed: u64) -> ExitCode {
    use mitosis_abi::ioctl as abi;
    let mut rng = Rng(seed | 1);
    let mut done = 0u64;
    let mut children_killed = 0u64;
    let chunk = 500u64;
    while done < iterations {
        let child_seed = rng.next();
        // SAFETY: single-threaded here; the child only makes syscalls and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut rng = Rng(child_seed | 1);
            let Ok(m) = Mitosis::open() else {
                // SAFETY: leaving the child without running the parent's handlers.
                unsafe { libc::_exit(3) };
            };
            let mut buf = vec![0u8; 8192];
            for _ in 0..chunk {
                let (nr, size) = if rng.below(10) == 0 {
                    (rng.below(256) as u8, rng.below(5000) as usize)
                } else {
                    let c = abi::COMMANDS[rng.below(abi::COMMANDS.len() as u64) as usize];
                    (
                        c.0,
                        if rng.below(4) == 0 {
                            rng.below(5000) as usize
                        } else {
                            c.1
                        },
                    )
                };
                let mut cmd = abi::iowr(nr, size);
                if rng.below(20) == 0 {
                    cmd ^= 1 << (30 + rng.below(2));
                }
                for b in buf.iter_mut() {
                    *b = rng.next() as u8;
                }
                if rng.below(2) == 0 {
                    buf[0..4].copy_from_slice(&abi::ABI_VERSION.to_ne_bytes());
                    buf[4..8].copy_from_slice(&(size as u32).to_ne_bytes());
                }
                // No connects to random addresses: those would only wait for timeouts.
                let no_peer = |off: usize, buf: &mut [u8]| buf[off..off + 4].fill(0);
                if nr == abi::decode(abi::IOC_FORK_RESUME).2 {
                    no_peer(
                        core::mem::offset_of!(abi::ForkResumeArgs, peer_addr),
                        &mut buf,
                    );
                }
                if nr == abi::decode(abi::IOC_REMOTE_OPEN).2 {
                    no_peer(
                        core::mem::offset_of!(abi::RemoteOpenArgs, peer_addr),
                        &mut buf,
                    );
                }
                let arg: *mut libc::c_void = match rng.below(20) {
                    0 => std::ptr::null_mut(),
                    1 => 0xffff_8880_0000_0000usize as *mut libc::c_void,
                    _ => buf.as_mut_ptr().cast(),
                };
                // SAFETY: the module validates everything; `buf` is writable for 8 KiB,
                // larger than any size above; the other pointers must be refused.
                unsafe { m.raw_ioctl(cmd, arg) };
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: reaping our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFSIGNALED(status) {
            children_killed += 1;
        }
        done += chunk;
    }
    let alive = Mitosis::open().and_then(|m| m.version().map(|_| ()));
    println!(
        "ioctl-fuzz: {done} ioctls (seed {seed:#x}), {children_killed} fuzzing children ended by a signal, module answers: {alive:?}"
    );
    if alive.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Allocation-failure injection, scoped to the tasks that opt in (`make-it-fail`):
/// the slab and page allocators each fail once, after `slab_budget` and `page_budget`
/// bytes of allocations (`space`), with nothing printed per failure.
fn inject(slab_budget: u64, page_budget: u64) -> std::io::Result<()> {
    for (dir, budget) in [("failslab", slab_budget), ("fail_page_alloc", page_budget)] {
        let set =
            |attr: &str, v: &str| std::fs::write(format!("/sys/kernel/debug/{dir}/{attr}"), v);
        set("task-filter", "Y")?;
        set("ignore-gfp-wait", "N")?;
        set("verbose", "0")?;
        set("probability", "100")?;
        set("interval", "1")?;
        set("space", &budget.to_string())?;
        set("times", if budget == u64::MAX { "0" } else { "1" })?;
        if dir == "fail_page_alloc" {
            set("min-order", "0")?;
            set("ignore-gfp-highmem", "N")?;
        }
    }
    Ok(())
}

/// Runs `f` in a child that opened the device and then opted in to fault injection;
/// returns how it ended: `Ok(exit status)` or `Err(signal)`; `None` if it hung
/// (killed after 60 s).
fn in_failing_child(f: impl FnOnce(&Mitosis) -> i32) -> Option<Result<i32, i32>> {
    // SAFETY: single-threaded caller; the child runs `f` and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = match Mitosis::open() {
            Ok(m) => match std::fs::write("/proc/self/make-it-fail", "1") {
                Ok(()) => f(&m),
                Err(_) => 3,
            },
            Err(_) => 4,
        };
        // SAFETY: leaving the child without the parent's exit handlers.
        unsafe { libc::_exit(code) };
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut status = 0;
        // SAFETY: polling our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFSIGNALED(status) {
                Err(libc::WTERMSIG(status))
            } else {
                Ok(libc::WEXITSTATUS(status))
            });
        }
        if Instant::now() > deadline {
            // SAFETY: our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // SAFETY: as above.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mitosis-test fault-inject prepare` (on any host) or `fault-inject resume HANDLE`:
/// 40 runs of prepare (+ release), or of resume (+ the child's faults), each with one
/// slab and one page allocation failing at a different point. Every run must end in
/// an error, a finished child, or (resume only: after the point of no return, on a
/// fault that cannot be served, or when the child's own first system calls fail)
/// SIGKILL, SIGBUS or the library's exit 127; never hang; and afterwards the same
/// operation must work again. Splats and leaks fail the guest run.
pub fn fault_inject(r: &mut Report, what: &str, handle: Option<&str>) -> ExitCode {
    let h: Option<SnapshotHandle> = handle.and_then(|h| h.parse().ok());
    let op = |m: &Mitosis| -> i32 {
        match (what, &h) {
            ("prepare", _) => match m.fork_prepare() {
                Ok(mitosis::Forked::Parent(p)) => {
                    let _ = m.fork_release(&p.handle, false);
                    0
                }
                Ok(mitosis::Forked::Child(_)) => 0,
                Err(_) => 10,
            },
            ("resume", Some(h)) => {
                let _ = m.fork_resume(h, ResumeOptions::default());
                10
            }
            _ => 2,
        }
    };
    let success = if what == "resume" {
        RESUMED_AGENT_EXIT
    } else {
        0
    };
    let (mut ok, mut refused, mut killed, mut bad) = (0, 0, 0, Vec::new());
    for k in 0..40u64 {
        if let Err(e) = inject(512 + k * 1536, k * 8192) {
            r.check(
                &format!("adv-fault-inject-{what}"),
                false,
                format!("debugfs: {e}"),
                &[],
            );
            return ExitCode::FAILURE;
        }
        match in_failing_child(op) {
            Some(Ok(c)) if c == success => ok += 1,
            Some(Ok(10)) => refused += 1,
            Some(Err(s)) if what == "resume" && (s == libc::SIGKILL || s == libc::SIGBUS) => {
                killed += 1
            }
            // The child's own first system calls failed under injection (the library
            // could not move the vDSO back and ends the child, status 127).
            Some(Ok(127)) if what == "resume" => killed += 1,
            other => bad.push(format!("run {k}: {other:?}")),
        }
    }
    let _ = inject(u64::MAX, u64::MAX);
    let after = in_failing_child(op);
    let pass = bad.is_empty() && after == Some(Ok(success)) && ok + refused + killed == 40;
    r.check(
        &format!("adv-fault-inject-{what}"),
        pass,
        format!(
            "40 runs: {ok} succeeded, {refused} refused, {killed} killed; unexpected: {bad:?}; afterwards: {after:?}"
        ),
        &[("succeeded", ok as f64), ("refused", refused as f64), ("killed", killed as f64)],
    );
    ExitCode::SUCCESS
}

/// Waits (bounded) for a child; `None` if it did not end within `limit`.
fn wait_bounded(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The RDMA device removed (`rdma link delete`) under a child still faulting its
/// 16 MiB in: the child finishes or gets SIGBUS, nothing hangs, the kernel stays clean
/// (connections on the device torn down, their DMA pages unmapped before it goes),
/// and once the device is back a new child resumes.
fn device_removed_under_child(r: &mut Report, agent: &mut Agent) {
    use std::os::unix::process::ExitStatusExt;
    let handle = agent
        .call("prepare 16")
        .and_then(|w| w.first().cloned().ok_or("no handle".into()));
    let Ok(handle) = handle else {
        r.check(
            "adv-device-removed-under-child",
            false,
            format!("{handle:?}"),
            &[],
        );
        return;
    };
    let resume = || {
        Command::new("/bin/mitosis-test")
            .args(["resume-expect", &handle, "child"])
            .spawn()
    };
    let ended = resume().ok().map(|mut c| {
        std::thread::sleep(Duration::from_millis(1500));
        let deleted = run_sh("rdma link delete rxe0");
        let st = wait_bounded(&mut c, Duration::from_secs(60));
        (deleted, st)
    });
    let added = run_sh("rdma link add rxe0 type rxe netdev eth0");
    std::thread::sleep(Duration::from_secs(2));
    let again = resume()
        .ok()
        .and_then(|mut c| wait_bounded(&mut c, Duration::from_secs(120)))
        .and_then(|st| st.code());
    let child_ok = matches!(&ended, Some((0, Some(st)))
        if st.code() == Some(RESUMED_AGENT_EXIT) || st.signal() == Some(libc::SIGBUS));
    r.check(
        "adv-device-removed-under-child",
        child_ok && added == 0 && again == Some(RESUMED_AGENT_EXIT),
        format!("delete and child: {ended:?}; re-added {added}; a new child afterwards: {again:?}"),
        &[],
    );
}

/// How long A's link holds every packet in `late_read_responses`: past this host's
/// READ timeout (`io_timeout_ms`, 3 s by default), short of RC's retry limit.
const LINK_DELAY_MS: u32 = 4000;

/// READ responses that arrive after the READ timed out: A's link is delayed by netem
/// while a child here faults its 64 MiB in. The READ times out, the connection is torn
/// down (QP drained, its DMA pages freed) while the responses are still on the wire,
/// and they reach a QP that no longer exists: nothing is written into freed memory
/// (the KASAN run checks it), the child ends (SIGBUS, or exit 42 if it already had
/// every page), and with the link healthy again a new child runs.
fn late_read_responses(r: &mut Report, agent: &mut Agent, m: &Mitosis) {
    use std::os::unix::process::ExitStatusExt;
    let failed_reads = |m: &Mitosis| {
        m.status()
            .map(|s| s.counters.read_timeouts + s.counters.read_errors)
            .unwrap_or(0)
    };
    let handle = agent
        .call("prepare 64")
        .and_then(|w| w.first().cloned().ok_or("no handle".into()));
    let Ok(handle) = handle else {
        r.check("adv-late-read-responses", false, format!("{handle:?}"), &[]);
        return;
    };
    let resume = || {
        Command::new("/bin/mitosis-test")
            .args(["resume-expect", &handle, "child"])
            .spawn()
    };
    let before = failed_reads(m);
    let delay = format!("/usr/sbin/tc qdisc add dev eth0 root netem delay {LINK_DELAY_MS}ms");
    let ended = resume().ok().map(|mut c| {
        std::thread::sleep(Duration::from_millis(300));
        let delayed = agent.sh(&delay);
        let st = wait_bounded(&mut c, Duration::from_secs(90));
        (delayed, st)
    });
    let cleared = agent.sh("/usr/sbin/tc qdisc del dev eth0 root");
    // Let every late packet arrive before anything else uses the link.
    std::thread::sleep(Duration::from_millis(2 * LINK_DELAY_MS as u64));
    let failed = failed_reads(m).saturating_sub(before);
    let again = resume()
        .ok()
        .and_then(|mut c| wait_bounded(&mut c, Duration::from_secs(120)))
        .and_then(|st| st.code());
    let child_ok = matches!(&ended, Some((Ok(0), Some(st)))
        if st.code() == Some(RESUMED_AGENT_EXIT) || st.signal() == Some(libc::SIGBUS));
    r.check(
        "adv-late-read-responses",
        child_ok && failed > 0 && matches!(cleared, Ok(0)) && again == Some(RESUMED_AGENT_EXIT),
        format!(
            "delay and child: {ended:?}; READs failed meanwhile {failed}; delay removed {cleared:?}; a new child afterwards: {again:?}"
        ),
        &[("failed_reads", failed as f64)],
    );
}
