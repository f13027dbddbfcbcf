//! Scenarios 1 to 4, driven from guest B against guest A's agent and module.

use crate::report::Report;
use mitosis::{parse_secret, Mitosis, RegionId};
use mitosis_abi::ioctl::{check_pattern, read_flags, MAX_BATCH_PAGES};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const SEED: u64 = 0x5eed_0001;
/// An address on the guests' link where no host answers.
const DEAD_HOST: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 99);

fn errno(r: &std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn errname(e: i32) -> String {
    let name = match e {
        0 => "ok",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ERANGE => "ERANGE",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EREMOTEIO => "EREMOTEIO",
        libc::ENODEV => "ENODEV",
        libc::ENETUNREACH => "ENETUNREACH",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}

/// Scenario 1 on this guest: the module answers and sees the device.
pub fn local(r: &mut Report, device: &str) {
    let m = match Mitosis::open() {
        Ok(m) => m,
        Err(e) => {
            r.check("s1-open-device", false, format!("{e}"), &[]);
            return;
        }
    };
    let v = m.version();
    r.check(
        "s1-version-ping",
        matches!(&v, Ok(v) if v.abi_version == mitosis_abi::ioctl::ABI_VERSION),
        format!("{v:?}"),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last;
    let ok = loop {
        match m.status() {
            Ok(s) => {
                let devs: Vec<_> = s.devices[..s.n_devices as usize].iter().collect();
                last = devs
                    .iter()
                    .map(|d| format!("{}:{}", d.name_str(), d.port_state))
                    .collect::<Vec<_>>()
                    .join(",");
                if devs
                    .iter()
                    .any(|d| d.name_str() == device && d.port_state == 4)
                    && s.listen_port != 0
                {
                    break true;
                }
            }
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            break false;
        }
        sleep(Duration::from_millis(200));
    };
    r.check(
        "s1-status-lists-device",
        ok,
        format!("devices [{last}], want {device} ACTIVE"),
        &[],
    );
}

/// Talks to the agent on A.
pub(crate) struct Agent {
    out: TcpStream,
    input: BufReader<TcpStream>,
}

impl Agent {
    pub(crate) fn connect(peer: Ipv4Addr, port: u16) -> std::io::Result<Agent> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match TcpStream::connect_timeout(&(peer, port).into(), Duration::from_secs(2)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(120)))?;
                    return Ok(Agent {
                        input: BufReader::new(s.try_clone()?),
                        out: s,
                    });
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => sleep(Duration::from_millis(500)),
            }
        }
    }

    pub(crate) fn call(&mut self, line: &str) -> Result<Vec<String>, String> {
        writeln!(self.out, "{line}").map_err(|e| e.to_string())?;
        let mut reply = String::new();
        self.input
            .read_line(&mut reply)
            .map_err(|e| e.to_string())?;
        let words: Vec<String> = reply.split_whitespace().map(String::from).collect();
        match words.first().map(String::as_str) {
            Some("ok") => Ok(words[1..].to_vec()),
            _ => Err(format!("agent said '{}' to '{line}'", reply.trim())),
        }
    }

    pub(crate) fn create(&mut self, size: u64, seed: u64) -> Result<RegionId, String> {
        let w = self.call(&format!("create {size} {seed}"))?;
        let id = w.first().and_then(|s| s.parse().ok()).ok_or("bad id")?;
        let secret = w.get(1).and_then(|s| parse_secret(s)).ok_or("bad secret")?;
        Ok(RegionId { id, secret })
    }

    /// A's CPU ticks (see [`crate::report::cpu_ticks`]).
    pub(crate) fn cpu_ticks(&mut self) -> Option<[u64; 7]> {
        let w = self.call("cpu").ok()?;
        let v: Vec<u64> = w.iter().filter_map(|s| s.parse().ok()).collect();
        v.try_into().ok()
    }

    pub(crate) fn sh(&mut self, cmd: &str) -> Result<i32, String> {
        let w = self.call(&format!("sh {cmd}"))?;
        w.first()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| "bad status".into())
    }
}

/// Reads `len` bytes at `off` with `batch` READs per doorbell and checks every byte.
fn read_verify(
    m: &Mitosis,
    handle: u64,
    off: u64,
    len: usize,
    batch: u32,
    seed: u64,
) -> Result<(f64, u64, u64), String> {
    let mut buf = vec![0u8; len];
    let st = m
        .remote_read(handle, off, &mut buf, batch, 0)
        .map_err(|e| format!("read: {e}"))?;
    match check_pattern(seed, off, &buf) {
        None => Ok((st.elapsed_ns as f64, st.reads, st.doorbells)),
        Some(w) => Err(format!("byte {} differs", off + 8 * w as u64)),
    }
}

/// Has A publish a region, opens it from here and reads and checks all of it.
fn publish_open_verify(
    m: &Mitosis,
    agent: &mut Agent,
    peer: Ipv4Addr,
    size: u64,
    seed: u64,
) -> Result<(f64, u64, u64), String> {
    let region = agent.create(size, seed)?;
    let x = m
        .remote_open(peer, 0, region, None)
        .map_err(|e| e.to_string())?;
    read_verify(m, x.handle, 0, size as usize, 64, seed)
}

pub(crate) fn run_sh(cmd: &str) -> i32 {
    println!("driver: running '{cmd}'");
    Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .map(|s| s.code().unwrap_or(-1))
        .unwrap_or(-1)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Scenarios 2, 3 and 4 against `peer`.
pub fn run(r: &mut Report, peer: Ipv4Addr, port: u16, size: u64) {
    let mut agent = match Agent::connect(peer, port) {
        Ok(a) => a,
        Err(e) => {
            r.check("driver-agent-reachable", false, e.to_string(), &[]);
            return;
        }
    };
    r.check("driver-agent-reachable", true, "", &[]);
    let m = match Mitosis::open() {
        Ok(m) => m,
        Err(e) => {
            r.check("driver-open-device", false, e.to_string(), &[]);
            return;
        }
    };
    scenario2(r, &m, &mut agent, peer, size);
    scenario3(r, &m, &mut agent, peer);
    drop(m);
    scenario4(r, &mut agent, peer);
    let _ = agent.call("quit");
}

fn scenario2(r: &mut Report, m: &Mitosis, agent: &mut Agent, peer: Ipv4Addr, size: u64) {
    let region = match agent.create(size, SEED) {
        Ok(x) => x,
        Err(e) => {
            r.check("s2-peer-publishes-region", false, e, &[]);
            return;
        }
    };
    let opened = m.remote_open(peer, 0, region, None);
    let Ok(h) = opened else {
        r.check("s2-open-region", false, format!("{opened:?}"), &[]);
        return;
    };
    r.check(
        "s2-open-region",
        h.size == size && h.connect_ns > 0,
        format!("size {} connect_ns {}", h.size, h.connect_ns),
        &[
            ("connect_ms", h.connect_ns as f64 / 1e6),
            ("open_ms", h.open_ns as f64 / 1e6),
        ],
    );
    let again = m.remote_open(peer, 0, region, None);
    r.check(
        "s2-connection-pooled",
        matches!(&again, Ok(x) if x.connect_ns == 0),
        format!("{again:?}"),
        &[(
            "open_ms",
            again.as_ref().map_or(f64::NAN, |x| x.open_ns as f64 / 1e6),
        )],
    );
    if let Ok(x) = again {
        let _ = m.remote_close(x.handle);
    }

    // Every page by single 4 KiB READs (one doorbell each), every byte checked.
    let t = Instant::now();
    match read_verify(m, h.handle, 0, size as usize, 1, SEED) {
        Ok((ns, reads, doorbells)) => r.check(
            "s2-single-page-reads-verified",
            reads == size / PAGE as u64 && doorbells == reads,
            format!("{reads} READs, {doorbells} doorbells"),
            &[
                ("bytes", size as f64),
                ("seconds", t.elapsed().as_secs_f64()),
                ("us_per_read_in_kernel", ns / 1e3 / reads.max(1) as f64),
                ("pages_per_s", reads as f64 / (ns / 1e9)),
            ],
        ),
        Err(e) => r.check("s2-single-page-reads-verified", false, e, &[]),
    };

    // One-page READ latency: separate ioctls at spread offsets.
    let pages = size / PAGE as u64;
    let mut lat = Vec::new();
    let mut kern = Vec::new();
    let mut bad = None;
    let mut buf = vec![0u8; PAGE];
    for i in 0..300u64 {
        let off = (i.wrapping_mul(7919) % pages) * PAGE as u64;
        let t = Instant::now();
        match m.remote_read(h.handle, off, &mut buf, 1, 0) {
            Ok(st) => {
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                kern.push(st.elapsed_ns as f64 / 1e3);
                if check_pattern(SEED, off, &buf).is_some() {
                    bad = Some(format!("page at {off} wrong"));
                }
            }
            Err(e) => bad = Some(format!("read at {off}: {e}")),
        }
    }
    r.check(
        "s2-one-page-latency",
        bad.is_none() && lat.len() == 300,
        bad.unwrap_or_default(),
        &[
            ("median_us", median(&mut lat)),
            ("p99_us", percentile(&mut lat, 0.99)),
            ("median_us_in_kernel", median(&mut kern)),
        ],
    );

    // Batched READs: 64 pages per doorbell. Both guests' CPU shares over the call
    // show which side limits the rate (B's user time is the verification, after the
    // READs; A does nothing else).
    let t = Instant::now();
    let cpu_before = (agent.cpu_ticks(), crate::report::cpu_ticks());
    let verified = read_verify(m, h.handle, 0, size as usize, MAX_BATCH_PAGES, SEED);
    let cpu_after = (agent.cpu_ticks(), crate::report::cpu_ticks());
    let shares = |b: Option<[u64; 7]>, a: Option<[u64; 7]>| {
        b.zip(a)
            .and_then(|(b, a)| crate::report::cpu_shares(b, a))
            .unwrap_or((-1.0, -1.0))
    };
    let (a_kernel, a_user) = shares(cpu_before.0, cpu_after.0);
    let (b_kernel, b_user) = shares(cpu_before.1, cpu_after.1);
    match verified {
        Ok((ns, reads, doorbells)) => r.check(
            "s2-batched-reads-verified",
            reads == pages && doorbells == pages.div_ceil(MAX_BATCH_PAGES as u64),
            format!("{reads} READs, {doorbells} doorbells"),
            &[
                ("seconds", t.elapsed().as_secs_f64()),
                ("pages_per_s", reads as f64 / (ns / 1e9)),
                ("mib_per_s", size as f64 / (ns / 1e9) / (1 << 20) as f64),
                ("a_cpu_busy_pct", a_kernel + a_user),
                ("b_cpu_kernel_pct", b_kernel),
                ("b_cpu_user_pct", b_user),
            ],
        ),
        Err(e) => r.check("s2-batched-reads-verified", false, e, &[]),
    };
    batched_reads_per_request(r, m, h.handle, size.min(SWEEP_BYTES));
    let _ = m.remote_close(h.handle);
    let _ = agent.call(&format!("destroy {}", region.id));
}

/// Bytes each `read_pages_per_wr` value of the sweep reads.
const SWEEP_BYTES: u64 = 4 << 20;
const PAGES_PER_WR: &str = "/sys/module/mitosis/parameters/read_pages_per_wr";

/// Batched READs (64 pages per doorbell) with 1, 4 and 16 contiguous pages per READ
/// request (scattered into as many local pages), every byte verified; the parameter is
/// restored afterwards.
fn batched_reads_per_request(r: &mut Report, m: &Mitosis, handle: u64, bytes: u64) {
    let Ok(saved) = std::fs::read_to_string(PAGES_PER_WR) else {
        let _ = r.check(
            "s2-read-pages-per-wr",
            false,
            "no read_pages_per_wr parameter",
            &[],
        );
        return;
    };
    let pages = bytes / 4096;
    for per_wr in [1u32, 4, 16] {
        let name = format!("s2-batched-reads-{per_wr}-per-wr");
        if let Err(e) = std::fs::write(PAGES_PER_WR, per_wr.to_string()) {
            let _ = r.check(&name, false, format!("setting the parameter: {e}"), &[]);
            continue;
        }
        match read_verify(m, handle, 0, bytes as usize, MAX_BATCH_PAGES, SEED) {
            Ok((ns, reads, _)) => r.check(
                &name,
                reads == pages,
                format!("{reads} pages"),
                &[
                    ("pages_per_s", reads as f64 / (ns / 1e9)),
                    ("mib_per_s", bytes as f64 / (ns / 1e9) / (1 << 20) as f64),
                ],
            ),
            Err(e) => r.check(&name, false, e, &[]),
        };
    }
    let _ = std::fs::write(PAGES_PER_WR, saved.trim());
}

fn scenario3(r: &mut Report, m: &Mitosis, agent: &mut Agent, peer: Ipv4Addr) {
    let size = 4u64 << 20;
    let region = match agent.create(size, SEED + 1) {
        Ok(x) => x,
        Err(e) => {
            r.check("s3-peer-publishes-region", false, e, &[]);
            return;
        }
    };
    let Ok(h) = m.remote_open(peer, 0, region, None) else {
        r.check("s3-open-region", false, "open failed", &[]);
        return;
    };
    let mut page = vec![0u8; PAGE];
    let e = errno(&m.remote_read(h.handle, size, &mut page, 1, 0));
    r.check("s3-local-bounds-check", e == libc::ERANGE, errname(e), &[]);

    let e = errno(&m.remote_open(
        peer,
        0,
        RegionId {
            id: 999_999,
            secret: region.secret,
        },
        None,
    ));
    // An id the peer does not have is refused like a wrong secret (ids cannot be
    // probed).
    r.check(
        "s3-unknown-region-refused",
        e == libc::EACCES,
        errname(e),
        &[],
    );
    let mut wrong = region.secret;
    wrong[0] ^= 1;
    let e = errno(&m.remote_open(
        peer,
        0,
        RegionId {
            id: region.id,
            secret: wrong,
        },
        None,
    ));
    r.check(
        "s3-wrong-secret-refused",
        e == libc::EACCES,
        errname(e),
        &[],
    );

    // Past the end with the local check off: the peer's registration must refuse it.
    let t = Instant::now();
    let e = errno(&m.remote_read(
        h.handle,
        size + 64 * PAGE as u64,
        &mut page,
        1,
        read_flags::UNCHECKED,
    ));
    r.check(
        "s3-remote-refuses-out-of-bounds",
        e == libc::EREMOTEIO,
        errname(e),
        &[("ms", t.elapsed().as_secs_f64() * 1e3)],
    );
    let healthy = agent.sh("true");
    let reopened = m.remote_open(peer, 0, region, None);
    let read_ok = reopened
        .as_ref()
        .map(|x| read_verify(m, x.handle, 0, PAGE * 16, 16, SEED + 1));
    r.check(
        "s3-peer-healthy-after-bad-read",
        healthy == Ok(0) && matches!(read_ok, Ok(Ok(_))),
        format!("agent {healthy:?}, reopen+read {read_ok:?}"),
        &[],
    );

    // Stale key: A destroys the region while B still holds its keys.
    if let Ok(x) = reopened {
        let d = agent.call(&format!("destroy {}", region.id));
        let e = errno(&m.remote_read(x.handle, 0, &mut page, 1, 0));
        r.check(
            "s3-stale-key-refused",
            d.is_ok() && e == libc::EREMOTEIO,
            format!("destroy {d:?}, read {}", errname(e)),
            &[],
        );
    }
    let healthy = agent.sh("true");
    r.check(
        "s3-peer-healthy-after-stale-key",
        healthy == Ok(0),
        format!("{healthy:?}"),
        &[],
    );

    // A host that does not answer: bounded failure.
    let t = Instant::now();
    let e = errno(&m.remote_open(DEAD_HOST, 0, region, Some(Duration::from_millis(2000))));
    let secs = t.elapsed().as_secs_f64();
    r.check(
        "s3-dead-host-fails-bounded",
        e != 0 && secs < 6.0,
        format!("{} after {secs:.2} s", errname(e)),
        &[("seconds", secs)],
    );
}

fn scenario4(r: &mut Report, agent: &mut Agent, peer: Ipv4Addr) {
    let m = match Mitosis::open() {
        Ok(m) => m,
        Err(e) => {
            r.check("s4-open-device", false, e.to_string(), &[]);
            return;
        }
    };
    let size = 4u64 << 20;
    let seed = SEED + 2;
    let live = agent
        .create(size, seed)
        .ok()
        .and_then(|region| m.remote_open(peer, 0, region, None).ok());
    let Some(h) = live else {
        r.check("s4-live-connection", false, "could not open a region", &[]);
        return;
    };
    r.check(
        "s4-live-connection",
        read_verify(&m, h.handle, 0, PAGE * 64, 64, seed).is_ok(),
        "",
        &[],
    );

    // rmmod on A while B is connected.
    let rc = agent.sh("rmmod mitosis");
    r.check(
        "s4-peer-rmmod-with-live-connection",
        rc == Ok(0),
        format!("{rc:?}"),
        &[],
    );
    let t = Instant::now();
    let mut page = vec![0u8; PAGE];
    let e = errno(&m.remote_read(h.handle, 0, &mut page, 1, 0));
    r.check(
        "s4-read-after-peer-unload-fails-cleanly",
        e != 0,
        errname(e),
        &[("ms", t.elapsed().as_secs_f64() * 1e3)],
    );
    // A host without the module: refused, bounded.
    let t = Instant::now();
    let e = errno(&m.remote_open(
        peer,
        0,
        RegionId {
            id: 1,
            secret: [0; 16],
        },
        Some(Duration::from_millis(3000)),
    ));
    let secs = t.elapsed().as_secs_f64();
    r.check(
        "s3-no-module-fails-bounded",
        e != 0 && secs < 6.0,
        format!("{} after {secs:.2} s", errname(e)),
        &[("seconds", secs)],
    );
    let rc = agent.sh("insmod /mitosis.ko");
    let again = publish_open_verify(&m, agent, peer, size, seed);
    r.check(
        "s4-peer-reload-then-read",
        rc == Ok(0) && again.is_ok(),
        format!("insmod {rc:?}, read {again:?}"),
        &[],
    );
    drop(m);

    // rdma link delete on this (now idle) host, and back.
    let rc = run_sh("rdma link delete rxe0");
    let m = Mitosis::open().ok();
    let gone = m
        .as_ref()
        .and_then(|m| m.status().ok())
        .map(|s| s.n_devices);
    r.check(
        "s4-link-delete-idle",
        rc == 0 && gone == Some(0),
        format!("rc {rc}, devices {gone:?}"),
        &[],
    );
    let rc = run_sh("rdma link add rxe0 type rxe netdev eth0");
    let back = wait_device(m.as_ref(), "rxe0");
    r.check("s4-link-readd", rc == 0 && back, format!("rc {rc}"), &[]);
    let after = m
        .as_ref()
        .ok_or("no device".to_string())
        .and_then(|m| publish_open_verify(m, agent, peer, size, seed));
    r.check(
        "s4-read-after-link-readd",
        after.is_ok(),
        format!("{after:?}"),
        &[],
    );
    drop(m);

    // Reload the module here.
    let rc1 = run_sh("rmmod mitosis");
    let rc2 = run_sh("insmod /mitosis.ko");
    let m = Mitosis::open();
    let v = m.as_ref().ok().map(|m| m.version().is_ok());
    r.check(
        "s4-local-reload",
        rc1 == 0 && rc2 == 0 && v == Some(true),
        format!("rmmod {rc1}, insmod {rc2}, ping {v:?}"),
        &[],
    );
    let after = m.map_err(|e| e.to_string()).and_then(|m| {
        if !wait_device(Some(&m), "rxe0") {
            return Err("no device".into());
        }
        publish_open_verify(&m, agent, peer, size, seed)
    });
    r.check(
        "s4-read-after-local-reload",
        after.is_ok(),
        format!("{after:?}"),
        &[],
    );
}

fn wait_device(m: Option<&Mitosis>, name: &str) -> bool {
    let Some(m) = m else { return false };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(s) = m.status() {
            if s.devices[..s.n_devices as usize]
                .iter()
                .any(|d| d.name_str() == name && d.port_state == 4)
            {
                return true;
            }
        }
        sleep(Duration::from_millis(200));
    }
    false
}
