//! `mitosis`: command-line tool for the Mitosis module.
//!
//! ```text
//! mitosis version
//! mitosis status [--json]
//! mitosis list [--json]
//! mitosis region create --size BYTES [--seed N]
//! mitosis region destroy ID
//! mitosis read --peer IP[:PORT] --region ID --secret HEX [--seed N] [--offset B]
//!              [--length B] [--batch PAGES] [--timeout-ms MS]
//! mitosis resume HANDLE|-|@FILE [--eager] [--timeout-ms MS] [--user UID[:GID]]
//! mitosis release HANDLE|-|@FILE [--force]
//! mitosis run HANDLE|-|@FILE [--bundle DIR | --rootfs DIR] [--memory BYTES] [--cpus N]
//!             [--pids N] [--hostname H] [--net none|host] [--user UID[:GID]]
//!             [--eager] [--timeout-ms MS] [--host-clock] [--timing]
//! ```
//! `resume` is the lean launcher: this process becomes a child of the snapshot (same
//! pid, credentials, namespaces, cgroup and open files) and never returns here; with
//! `--user` it first becomes that unprivileged identity (groups dropped, `no_new_privs`).
//! `run` is the lean container launcher (run.rs): the child runs in new namespaces and
//! a cgroup with limits, and its exit status is `run`'s (125: the launch failed).
//! Sizes accept K, M and G suffixes. Exit status: 0 ok, 1 operation failed, 2 bad usage.

mod container;
mod run;

use clap::{Args, Parser, Subcommand};
use container::{ContainerSpec, CpuMax, Net};
use mitosis::{
    format_secret, parse_secret, Identity, Mitosis, RegionId, ResumeOptions, SnapshotEntry,
    SnapshotHandle,
};
use mitosis_abi::ioctl::{check_pattern, Counters, StatusArgs, MAX_BATCH_PAGES};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Command-line tool for the Mitosis remote-fork module. A HANDLE is IP:PORT/ID/SECRET
/// as printed by the program that prepared the snapshot; `-` reads it from stdin and
/// `@FILE` from the first line of FILE (so the secret stays out of `ps`).
#[derive(Parser, Debug)]
#[command(name = "mitosis", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The module's version and ABI version (a ping).
    Version,
    /// Listen port, RDMA devices, live connections and the counters.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The snapshots published on this host: handle without the secret, the process
    /// that prepared it and the seed, size, pages, peer hosts reading it now, children
    /// on this host mapping it, age.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Test regions: kernel pages filled with a pattern, readable by peers.
    #[command(subcommand)]
    Region(RegionCmd),
    /// Opens a peer's region and reads it with one-sided READs.
    Read {
        /// IP[:PORT] of the peer (port 0 or none: the default).
        #[arg(long, value_parser = parse_peer_arg)]
        peer: (Ipv4Addr, u16),
        /// The region's id.
        #[arg(long, value_parser = parse_num)]
        region: u64,
        /// The region's secret (32 hex digits).
        #[arg(long, value_parser = parse_secret_arg)]
        secret: [u8; 16],
        /// Verify every byte against the pattern of this seed.
        #[arg(long, value_parser = parse_num)]
        seed: Option<u64>,
        /// First byte to read (K/M/G suffixes).
        #[arg(long, value_parser = parse_size_arg)]
        offset: Option<u64>,
        /// Bytes to read (default: to the end).
        #[arg(long, value_parser = parse_size_arg)]
        length: Option<u64>,
        /// Pages per doorbell (1..=64).
        #[arg(long, value_parser = parse_num, default_value_t = MAX_BATCH_PAGES as u64)]
        batch: u64,
        /// Connect timeout (0 or none: the module's).
        #[arg(long, value_parser = parse_num)]
        timeout_ms: Option<u64>,
    },
    /// The lean launcher: this process becomes a child of the snapshot (same pid,
    /// namespaces, cgroup and open files) and never returns here.
    Resume {
        /// HANDLE, `-` (stdin) or `@FILE`.
        handle: String,
        /// Fetch every page before the child runs.
        #[arg(long)]
        eager: bool,
        /// Connect timeout.
        #[arg(long, value_parser = parse_num)]
        timeout_ms: Option<u64>,
        /// Become this unprivileged identity first (groups dropped, no_new_privs).
        #[arg(long, value_name = "UID[:GID]", value_parser = parse_identity)]
        user: Option<Identity>,
    },
    /// The lean container: resumes the snapshot as pid 1 of new pid, mount, uts, ipc,
    /// cgroup and time namespaces (and a network one with --net none), in a cgroup v2
    /// group with the limits, inside a root filesystem; exits with the child's status
    /// (128+N for signal N, 125 when the launch failed).
    Run(RunCmd),
    /// On the parent's host: ends the snapshot (running children keep working).
    Release {
        /// HANDLE, `-` (stdin) or `@FILE`.
        handle: String,
        /// Also revoke running children's access (their next remote fault: SIGBUS).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct RunCmd {
    /// HANDLE, `-` (stdin) or `@FILE`.
    handle: String,
    /// An OCI runtime bundle: DIR/config.json (root, hostname, mounts, process.user,
    /// linux.namespaces and linux.resources) and its root filesystem. Flags override it.
    #[arg(long, value_name = "DIR", conflicts_with = "rootfs")]
    bundle: Option<PathBuf>,
    /// Root filesystem to switch to, with /proc, /dev (device nodes and /dev/mitosis)
    /// and /tmp mounted in it (default: this host's root with a fresh /proc).
    #[arg(long, value_name = "DIR")]
    rootfs: Option<PathBuf>,
    /// memory.max of the child's group (K/M/G); over it, the OOM killer ends the child.
    #[arg(long, value_parser = parse_size_arg)]
    memory: Option<u64>,
    /// CPUs the group may use (cpu.max over a 100 ms period), e.g. 0.5.
    #[arg(long, value_parser = container::parse_cpus)]
    cpus: Option<CpuMax>,
    /// pids.max: processes and threads the group may have.
    #[arg(long, value_parser = parse_num)]
    pids: Option<u64>,
    /// The container's host name (new uts namespace).
    #[arg(long, value_parser = container::parse_hostname)]
    hostname: Option<String>,
    /// none: a new network namespace with loopback only; host: this host's network.
    #[arg(long, value_parser = container::parse_net)]
    net: Option<Net>,
    /// Run the child as this unprivileged identity (groups dropped, no_new_privs).
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_identity)]
    user: Option<mitosis::Identity>,
    /// Fetch every page before the child runs.
    #[arg(long)]
    eager: bool,
    /// Connect timeout.
    #[arg(long, value_parser = parse_num)]
    timeout_ms: Option<u64>,
    /// Keep this host's clocks (no time namespace: CLOCK_MONOTONIC may be earlier
    /// than the seed's).
    #[arg(long)]
    host_clock: bool,
    /// Print the launcher's own time (cgroup, namespaces, mounts) as one JSON line on
    /// stderr just before the resume.
    #[arg(long)]
    timing: bool,
}

#[derive(Subcommand, Debug)]
enum RegionCmd {
    /// Publishes a region; prints its id and secret.
    Create {
        /// Size in bytes (a multiple of 4096; K/M/G suffixes).
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
        /// Pattern seed.
        #[arg(long, value_parser = parse_num, default_value_t = 1)]
        seed: u64,
    },
    /// Unpublishes a region (peers lose access).
    Destroy {
        #[arg(value_parser = parse_num)]
        id: u64,
    },
}

/// A failure with its exit code.
struct Fail(u8, String);

fn usage(msg: impl Into<String>) -> Fail {
    Fail(2, format!("{} (see mitosis --help)", msg.into()))
}

fn op(what: &str, e: std::io::Error) -> Fail {
    Fail(1, format!("{what}: {e}"))
}

/// Parses `123`, `4K`, `64M`, `1G`.
fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// `123`, `0x7b`.
fn parse_num(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
    .ok_or_else(|| format!("bad number '{s}'"))
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("bad size '{s}' (a number with K, M or G)"))
}

fn parse_peer_arg(s: &str) -> Result<(Ipv4Addr, u16), String> {
    parse_peer(s).ok_or_else(|| format!("'{s}' is not IP[:PORT]"))
}

fn parse_secret_arg(s: &str) -> Result<[u8; 16], String> {
    parse_secret(s).ok_or_else(|| "a secret is 32 hex digits".to_string())
}

fn open() -> Result<Mitosis, Fail> {
    Mitosis::open().map_err(|e| {
        Fail(
            1,
            format!(
                "cannot open {}: {e} (is mitosis.ko loaded?)",
                mitosis::DEVICE_PATH
            ),
        )
    })
}

/// `mitosis status --json`: one object, counters in ABI order.
#[derive(Serialize)]
struct StatusJson<'a> {
    abi_version: u32,
    module_version: &'a str,
    listen_port: u32,
    connections: u32,
    devices: Vec<DeviceJson<'a>>,
    counters: CountersJson<'a>,
}

#[derive(Serialize)]
struct DeviceJson<'a> {
    name: &'a str,
    port_state: u32,
    max_fast_reg_page_list_len: u32,
    max_qp_rd_atom: u32,
}

/// The counters as a JSON object whose keys keep the ABI's order.
struct CountersJson<'a>(&'a Counters);

impl Serialize for CountersJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(Counters::NAMES.len()))?;
        for (k, v) in self.0.iter() {
            map.serialize_entry(k, &v)?;
        }
        map.end()
    }
}

fn status_json(v: &mitosis::Version, s: &StatusArgs) -> String {
    let n = (s.n_devices as usize).min(s.devices.len());
    let doc = StatusJson {
        abi_version: v.abi_version,
        module_version: &v.module_version,
        listen_port: s.listen_port,
        connections: s.n_connections,
        devices: s.devices[..n]
            .iter()
            .map(|d| DeviceJson {
                name: d.name_str(),
                port_state: d.port_state,
                max_fast_reg_page_list_len: d.max_fast_reg_page_list_len,
                max_qp_rd_atom: d.max_qp_rd_atom,
            })
            .collect(),
        counters: CountersJson(&s.counters),
    };
    // Serializing plain numbers and strings cannot fail.
    serde_json::to_string(&doc).unwrap_or_default()
}

fn cmd_status(json: bool) -> Result<(), Fail> {
    let m = open()?;
    let v = m.version().map_err(|e| op("version", e))?;
    let s = m.status().map_err(|e| op("status", e))?;
    if json {
        println!("{}", status_json(&v, &s));
        return Ok(());
    }
    let devices = &s.devices[..(s.n_devices as usize).min(s.devices.len())];
    println!(
        "module {} (ABI {}), listening on port {}",
        v.module_version, v.abi_version, s.listen_port
    );
    println!("devices: {}", if devices.is_empty() { "none" } else { "" });
    for d in devices {
        let state = if d.port_state == 4 {
            "ACTIVE".to_string()
        } else {
            format!("state {}", d.port_state)
        };
        println!(
            "  {}: port 1 {}, fast-reg pages {}, rd atom {}",
            d.name_str(),
            state,
            d.max_fast_reg_page_list_len,
            d.max_qp_rd_atom
        );
    }
    println!("connections: {}", s.n_connections);
    for (k, v) in s.counters.iter() {
        println!("  {k:22} {v}");
    }
    Ok(())
}

/// One line of `mitosis list --json`.
#[derive(Serialize)]
struct ListEntryJson {
    id: u64,
    /// `IP:PORT/ID`: the handle without its secret.
    handle: String,
    size_bytes: u64,
    pages: u64,
    desc_bytes: u64,
    peers: u32,
    /// Children on this host mapping it now.
    children: u32,
    /// The process that prepared it, and the seed (ended at the capture).
    parent_pid: u32,
    seed_pid: u32,
    age_ms: u64,
}

fn list_entries(host: &str, port: u32, entries: &[SnapshotEntry]) -> Vec<ListEntryJson> {
    entries
        .iter()
        .map(|e| ListEntryJson {
            id: e.id,
            handle: format!("{host}:{port}/{}", e.id),
            size_bytes: e.pages.saturating_mul(4096),
            pages: e.pages,
            desc_bytes: e.desc_bytes,
            peers: e.peers,
            children: e.children,
            parent_pid: e.parent_pid,
            seed_pid: e.seed_pid,
            age_ms: e.age_ms,
        })
        .collect()
}

/// `1.5 GiB`, `48.0 MiB`, `12 KiB`.
fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{} KiB", b >> 10),
    }
}

/// `3.2 s`, `4 min 10 s`, `2 h 5 min`.
fn human_age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        s if s >= 3600 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

fn cmd_list(json: bool) -> Result<(), Fail> {
    let m = open()?;
    let entries = m.snapshots().map_err(|e| op("list", e))?;
    let port = m.status().map_err(|e| op("status", e))?.listen_port;
    let host = mitosis::fork::local_host()
        .map(|h| h.to_string())
        .unwrap_or_else(|_| "?".into());
    let rows = list_entries(&host, port, &entries);
    if json {
        // Serializing plain numbers and strings cannot fail.
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
        return Ok(());
    }
    if rows.is_empty() {
        println!("no snapshots on this host");
        return Ok(());
    }
    println!(
        "{:<32} {:>8} {:>8} {:>10} {:>8} {:>5} {:>8} {:>12}",
        "HANDLE (no secret)", "PARENT", "SEED", "SIZE", "PAGES", "PEERS", "CHILDREN", "AGE"
    );
    for r in &rows {
        println!(
            "{:<32} {:>8} {:>8} {:>10} {:>8} {:>5} {:>8} {:>12}",
            r.handle,
            r.parent_pid,
            r.seed_pid,
            human_bytes(r.size_bytes),
            r.pages,
            r.peers,
            r.children,
            human_age(r.age_ms)
        );
    }
    Ok(())
}

fn cmd_region(cmd: RegionCmd) -> Result<(), Fail> {
    let m = open()?;
    match cmd {
        RegionCmd::Create { size, seed } => {
            let r = m
                .region_create(size, seed)
                .map_err(|e| op("region create", e))?;
            println!(
                "region {} secret {} size {size} seed {seed}",
                r.id,
                format_secret(&r.secret)
            );
        }
        RegionCmd::Destroy { id } => {
            m.region_destroy(id).map_err(|e| op("region destroy", e))?;
            println!("region {id} destroyed");
        }
    }
    Ok(())
}

fn parse_peer(s: &str) -> Option<(Ipv4Addr, u16)> {
    match s.split_once(':') {
        Some((ip, port)) => Some((ip.parse().ok()?, port.parse().ok()?)),
        None => Some((s.parse().ok()?, 0)),
    }
}

/// What `mitosis read` reads and how.
struct ReadArgs {
    peer: (Ipv4Addr, u16),
    region: RegionId,
    seed: Option<u64>,
    offset: u64,
    length: Option<u64>,
    batch: u64,
    timeout: Option<Duration>,
}

fn cmd_read(a: ReadArgs) -> Result<(), Fail> {
    if a.batch == 0 || a.batch > MAX_BATCH_PAGES as u64 {
        return Err(usage(format!("--batch must be 1..={MAX_BATCH_PAGES}")));
    }
    let (ip, port) = a.peer;
    let id = a.region.id;
    let m = open()?;
    let r = m
        .remote_open(ip, port, a.region, a.timeout)
        .map_err(|e| op("open", e))?;
    let offset = a.offset;
    let length = a.length.unwrap_or(r.size.saturating_sub(offset));
    println!(
        "opened region {id} on {ip}: {} bytes (connect {:.3} ms, open {:.3} ms)",
        r.size,
        r.connect_ns as f64 / 1e6,
        r.open_ns as f64 / 1e6
    );
    let len = usize::try_from(length).map_err(|_| usage("--length too large"))?;
    let mut buf = vec![0u8; len];
    let chunk = 16usize << 20;
    let start = Instant::now();
    let mut reads = 0;
    for (i, part) in buf.chunks_mut(chunk).enumerate() {
        let off = offset + (i * chunk) as u64;
        let st = m
            .remote_read(r.handle, off, part, a.batch as u32, 0)
            .map_err(|e| op("read", e))?;
        reads += st.reads;
        eprint!(
            "\rread {} / {} MiB",
            (off - offset + part.len() as u64) >> 20,
            length >> 20
        );
    }
    eprintln!();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "read {length} bytes in {reads} READs ({}/doorbell) in {:.3} s: {:.0} pages/s, {:.1} MiB/s",
        a.batch,
        secs,
        reads as f64 / secs,
        length as f64 / secs / (1 << 20) as f64
    );
    if let Some(seed) = a.seed {
        match check_pattern(seed, offset, &buf) {
            None => println!("verified every byte against seed {seed}"),
            Some(w) => {
                return Err(Fail(
                    1,
                    format!("mismatch at byte offset {}", offset + 8 * w as u64),
                ))
            }
        }
    }
    Ok(())
}

/// The first line of stdin, read a byte at a time through a duplicate of descriptor 0
/// (same file offset): what follows the line stays there for the child, whose stdin
/// this is. A buffered read would take the child's input with it.
fn handle_from_stdin() -> Result<String, Fail> {
    use std::io::Read;
    use std::os::fd::AsFd;
    // Longer than any handle with surrounding blanks: a bound on what a bad input makes
    // us read.
    const MAX_LINE: usize = 1024;
    let fail = |e: std::io::Error| usage(format!("reading the handle from stdin: {e}"));
    let mut stdin = std::fs::File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(fail)?,
    );
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < MAX_LINE => line.push(byte[0]),
            Ok(_) => {
                return Err(usage(format!(
                    "no handle in the first {MAX_LINE} bytes of stdin"
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(e)),
        }
    }
    String::from_utf8(line).map_err(|_| usage("the handle on stdin is not text"))
}

/// The snapshot handle: the argument, or with `-` the first line of stdin, or with
/// `@PATH` the first line of a file (a handle carries the secret: on a command line it
/// is visible to every user in `ps` and `/proc/PID/cmdline`).
fn handle_arg(arg: &str) -> Result<SnapshotHandle, Fail> {
    let text = match arg {
        "-" => handle_from_stdin()?,
        h if h.starts_with('@') => std::fs::read_to_string(&h[1..])
            .map_err(|e| usage(format!("reading the handle from {}: {e}", &h[1..])))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        h => h.to_string(),
    };
    text.trim()
        .parse()
        .map_err(|e: std::io::Error| usage(e.to_string()))
}

/// `UID[:GID]` (numeric; the gid defaults to the uid). Root (0) is refused: the point
/// is to give up privilege.
fn parse_identity(text: &str) -> Result<Identity, String> {
    let bad = || format!("'{text}' is not UID[:GID] with non-zero numbers");
    let (uid, gid) = match text.split_once(':') {
        Some((u, g)) => (u, g),
        None => (text, text),
    };
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = gid.parse().map_err(|_| bad())?;
    if uid == 0 || gid == 0 {
        return Err(bad());
    }
    Ok(Identity { uid, gid })
}

fn cmd_run(c: RunCmd) -> Result<u8, Fail> {
    let handle = handle_arg(&c.handle)?;
    let mut spec = match &c.bundle {
        Some(dir) => ContainerSpec::from_bundle(dir)
            .map_err(|e| Fail(run::LAUNCH_FAILED, format!("run: {e}")))?,
        None => ContainerSpec {
            rootfs: c.rootfs.clone(),
            ..Default::default()
        },
    };
    if c.memory.is_some() {
        spec.limits.memory_max = c.memory;
    }
    if c.cpus.is_some() {
        spec.limits.cpu = c.cpus;
    }
    if c.pids.is_some() {
        spec.limits.pids_max = c.pids;
    }
    if c.hostname.is_some() {
        spec.hostname = c.hostname.clone();
    }
    if let Some(net) = c.net {
        spec.net = net;
    }
    if c.user.is_some() {
        spec.user = c.user;
    }
    let m = open().map_err(|Fail(_, msg)| Fail(run::LAUNCH_FAILED, msg))?;
    Ok(run::run(
        &m,
        run::RunArgs {
            handle,
            spec,
            eager: c.eager,
            connect_timeout: c.timeout_ms.map(Duration::from_millis),
            host_clock: c.host_clock,
            timing: c.timing,
        },
    ))
}

fn run(command: Cmd) -> Result<(), Fail> {
    match command {
        Cmd::Run(_) => unreachable!("dispatched by main"),
        Cmd::Version => {
            let v = open()?.version().map_err(|e| op("version", e))?;
            println!(
                "mitosis module {} ABI {} (tool ABI {})",
                v.module_version,
                v.abi_version,
                mitosis_abi::ioctl::ABI_VERSION
            );
            Ok(())
        }
        Cmd::Status { json } => cmd_status(json),
        Cmd::List { json } => cmd_list(json),
        Cmd::Region(cmd) => cmd_region(cmd),
        Cmd::Read {
            peer,
            region,
            secret,
            seed,
            offset,
            length,
            batch,
            timeout_ms,
        } => cmd_read(ReadArgs {
            peer,
            region: RegionId { id: region, secret },
            seed,
            offset: offset.unwrap_or(0),
            length,
            batch,
            timeout: timeout_ms.map(Duration::from_millis),
        }),
        // Becomes a child of the snapshot; returns only on failure.
        Cmd::Resume {
            handle,
            eager,
            timeout_ms,
            user,
        } => {
            let handle = handle_arg(&handle)?;
            let opts = ResumeOptions {
                eager,
                connect_timeout: timeout_ms.map(Duration::from_millis),
                user,
            };
            let m = open()?;
            Err(op(
                &format!("resume from {handle}"),
                m.fork_resume(&handle, opts),
            ))
        }
        Cmd::Release { handle, force } => {
            let handle = handle_arg(&handle)?;
            open()?
                .fork_release(&handle, force)
                .map_err(|e| op("release", e))?;
            println!("released snapshot {}", handle.id);
            Ok(())
        }
    }
}

/// The launcher's hot path: `mitosis resume HANDLE` and nothing else, which a platform
/// runs once per child. It skips building the whole command line's definition (clap's
/// parser for every subcommand), the code most of what this binary runs before the
/// resume: under the test guests' emulation, where a new process pays for every
/// piece of code it runs, that was most of a 76 ms launch (docs/benchmarks.md,
/// "Python functions"). Anything else, help and every usage error go to clap, which
/// parses these arguments the same way (checked by a test).
fn plain_resume(args: &[std::ffi::OsString]) -> Option<Cmd> {
    let [_, cmd, handle] = args else {
        return None;
    };
    let handle = handle.to_str()?;
    // clap reads "-" as a value, anything else starting with '-' as an option.
    if cmd != "resume" || (handle.starts_with('-') && handle != "-") {
        return None;
    }
    Some(Cmd::Resume {
        handle: handle.to_string(),
        eager: false,
        timeout_ms: None,
        user: None,
    })
}

fn main() -> ExitCode {
    // Usage errors exit 2 with clap's message; `--help` and `--version` exit 0.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = match plain_resume(&args) {
        Some(cmd) => cmd,
        None => Cli::parse_from(args).command,
    };
    let result = match command {
        Cmd::Run(c) => cmd_run(c),
        other => run(other).map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Fail(code, msg)) => {
            eprintln!("mitosis: {msg}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mitosis").chain(args.iter().copied()))
    }

    #[test]
    fn plain_resume_parses_as_clap_does() {
        let os = |v: &[&str]| -> Vec<std::ffi::OsString> {
            std::iter::once("mitosis")
                .chain(v.iter().copied())
                .map(Into::into)
                .collect()
        };
        let handle = "169.254.77.1:18515/7/acc2261a7d2c0ae222fefcfae99d1650/4281";
        for args in [
            vec!["resume", handle],
            vec!["resume", "@/tmp/h"],
            vec!["resume", "-"],
            vec!["resume", "not-a-handle"],
        ] {
            let fast = plain_resume(&os(&args)).expect("the hot path takes it");
            let clap = parse(&args).expect("clap takes it").command;
            assert_eq!(format!("{fast:?}"), format!("{clap:?}"), "{args:?}");
        }
        // Everything else is clap's.
        for args in [
            vec!["resume"],
            vec!["resume", "--help"],
            vec!["resume", "-x"],
            vec!["resume", "--eager", handle],
            vec!["resume", handle, "--eager"],
            vec!["release", handle],
            vec!["status", "--json"],
            vec!["--version"],
        ] {
            assert!(plain_resume(&os(&args)).is_none(), "{args:?}");
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn identity_parsing() {
        let id = |t: &str| parse_identity(t).ok();
        assert_eq!(
            id("65534"),
            Some(Identity {
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(
            id("1000:100"),
            Some(Identity {
                uid: 1000,
                gid: 100
            })
        );
        for bad in ["0", "1000:0", "nobody", "1000:", "-1"] {
            assert_eq!(id(bad), None, "{bad}");
        }
        assert!(parse(&["resume", "--user", "0", "h"]).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4K"), Some(4096));
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    #[test]
    fn peers() {
        assert_eq!(parse_peer("1.2.3.4"), Some((Ipv4Addr::new(1, 2, 3, 4), 0)));
        assert_eq!(
            parse_peer("1.2.3.4:99"),
            Some((Ipv4Addr::new(1, 2, 3, 4), 99))
        );
        assert_eq!(parse_peer("nope"), None);
    }

    #[test]
    fn run_parses_limits_and_refuses_conflicts() {
        let c = parse(&[
            "run",
            "--rootfs",
            "/srv/root",
            "--memory",
            "256M",
            "--cpus",
            "0.5",
            "--pids",
            "64",
            "--hostname",
            "fn-1",
            "--net",
            "none",
            "--user",
            "1000",
            "--timing",
            "@/tmp/h",
        ])
        .unwrap();
        let Cmd::Run(r) = c.command else {
            panic!("not run")
        };
        assert_eq!(r.memory, Some(256 << 20));
        assert_eq!(
            r.cpus,
            Some(CpuMax {
                quota_us: 50_000,
                period_us: 100_000
            })
        );
        assert_eq!((r.pids, r.net), (Some(64), Some(Net::None)));
        assert_eq!(r.hostname.as_deref(), Some("fn-1"));
        assert_eq!(r.user.map(|u| (u.uid, u.gid)), Some((1000, 1000)));
        assert!(r.timing && !r.host_clock && !r.eager);
        for bad in [
            &["run", "--bundle", "/b", "--rootfs", "/r", "h"][..],
            &["run", "--cpus", "0", "h"],
            &["run", "--net", "bridge", "h"],
            &["run", "--hostname", "-bad", "h"],
            &["run", "--memory", "lots", "h"],
            &["run", "--user", "0", "h"],
            &["run"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_parse_and_refuse() {
        let c = parse(&["resume", "--eager", "--timeout-ms", "0x10", "@/tmp/h"]).unwrap();
        assert!(
            matches!(c.command, Cmd::Resume { eager: true, timeout_ms: Some(16), ref handle, user: None } if handle == "@/tmp/h")
        );
        let c = parse(&["region", "create", "--size", "64M"]).unwrap();
        assert!(matches!(
            c.command,
            Cmd::Region(RegionCmd::Create {
                size: 67108864,
                seed: 1
            })
        ));
        let secret = "00112233445566778899aabbccddeeff";
        let c = parse(&[
            "read",
            "--peer",
            "10.0.0.2:7",
            "--region",
            "3",
            "--secret",
            secret,
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Cmd::Read {
                peer: (_, 7),
                region: 3,
                batch: 64,
                ..
            }
        ));
        // Unknown options, missing values and arguments, bad values: usage errors.
        for bad in [
            &["--bogus"][..],
            &["status", "--bogus"],
            &["region", "create"],
            &["region", "create", "--size"],
            &["region", "create", "--size", "12Q"],
            &["region", "destroy", "x"],
            &["resume"],
            &[
                "read", "--peer", "nope", "--region", "1", "--secret", secret,
            ],
            &[
                "read", "--peer", "1.2.3.4", "--region", "1", "--secret", "abc",
            ],
            &["frobnicate"],
        ] {
            let e = parse(bad).expect_err(&format!("{bad:?}"));
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        // Every command has --help.
        for cmd in [
            &["status"][..],
            &["region", "create"],
            &["read"],
            &["resume"],
            &["release"],
        ] {
            let mut args = cmd.to_vec();
            args.push("--help");
            let e = parse(&args).expect_err("help is an early exit");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        }
    }

    #[test]
    fn handles_from_arguments_and_files() {
        let text = "169.254.77.1:18515/7/00112233445566778899aabbccddeeff";
        let parsed = handle_arg(text).ok().unwrap();
        assert_eq!(parsed.id, 7);
        let path = std::env::temp_dir().join(format!("mitosis-handle-{}", std::process::id()));
        std::fs::write(&path, format!("{text}\n")).unwrap();
        let from_file = handle_arg(&format!("@{}", path.display())).ok().unwrap();
        assert_eq!(from_file.id, 7);
        let _ = std::fs::remove_file(&path);
        assert!(handle_arg("@/nonexistent/handle").is_err());
        assert!(handle_arg("not-a-handle").is_err());
    }

    #[test]
    fn list_rows_and_units() {
        let e = SnapshotEntry {
            id: 7,
            pages: 12_288,
            desc_bytes: 6000,
            age_ms: 125_000,
            peers: 2,
            children: 3,
            seed_pid: 101,
            parent_pid: 100,
        };
        let rows = list_entries("10.0.0.1", 18515, &[e]);
        let doc: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&rows).unwrap()).unwrap();
        assert_eq!(doc[0]["handle"], "10.0.0.1:18515/7");
        assert_eq!(doc[0]["size_bytes"], 12_288u64 * 4096);
        assert_eq!(doc[0]["peers"], 2);
        assert_eq!(doc[0]["children"], 3);
        assert_eq!(doc[0]["parent_pid"], 100);
        assert_eq!(doc[0]["seed_pid"], 101);
        assert_eq!(human_bytes(48 << 20), "48.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(8192), "8 KiB");
        assert_eq!(human_age(125_000), "2 min 5 s");
        assert_eq!(human_age(7_300_000), "2 h 1 min");
        assert_eq!(human_age(1_500), "1.5 s");
        assert!(parse(&["list", "--json"]).is_ok());
    }

    #[test]
    fn status_json_is_real_json_in_abi_order() {
        let mut s = StatusArgs {
            n_devices: 1,
            n_connections: 3,
            listen_port: 18515,
            ..Default::default()
        };
        s.devices[0].name[..4].copy_from_slice(b"rxe0");
        s.devices[0].port_state = 4;
        s.counters.resumes = 5;
        let v = mitosis::Version {
            abi_version: 3,
            module_version: "0.1.0 \"quoted\"".into(),
        };
        let text = status_json(&v, &s);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["listen_port"], 18515);
        assert_eq!(doc["connections"], 3);
        assert_eq!(doc["module_version"], "0.1.0 \"quoted\"");
        assert_eq!(doc["devices"][0]["name"], "rxe0");
        assert_eq!(doc["counters"]["resumes"], 5);
        let keys: Vec<&str> = text
            .split("\"counters\":{")
            .nth(1)
            .unwrap()
            .split(',')
            .filter_map(|kv| kv.split('"').nth(1))
            .collect();
        assert_eq!(keys, Counters::NAMES);
    }
}
