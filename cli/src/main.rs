//! `mitosis`: command-line tool for the Mitosis module.
//!
//! ```text
//! mitosis version
//! mitosis status [--json]
//! mitosis region create --size BYTES [--seed N]
//! mitosis region destroy ID
//! mitosis read --peer IP[:PORT] --region ID --secret HEX [--seed N] [--offset B]
//!              [--length B] [--batch PAGES] [--timeout-ms MS]
//! mitosis resume HANDLE|-|@FILE [--eager] [--timeout-ms MS] [--user UID[:GID]]
//! mitosis release HANDLE|-|@FILE [--force]
//! ```
//! `resume` is the lean launcher: this process becomes a child of the snapshot (same
//! pid, credentials, namespaces, cgroup and open files) and never returns here; with
//! `--user` it first becomes that unprivileged identity (groups dropped, `no_new_privs`).
//! Sizes accept K, M and G suffixes. Exit status: 0 ok, 1 operation failed, 2 bad usage.

use mitosis::{
    format_secret, parse_secret, Identity, Mitosis, RegionId, ResumeOptions, SnapshotHandle,
};
use mitosis_abi::ioctl::{check_pattern, MAX_BATCH_PAGES};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage:
  mitosis version
  mitosis status [--json]
  mitosis region create --size BYTES [--seed N]
  mitosis region destroy ID
  mitosis read --peer IP[:PORT] --region ID --secret HEX [--seed N] [--offset B]
               [--length B] [--batch PAGES] [--timeout-ms MS]
  mitosis resume HANDLE|-|@FILE [--eager] [--timeout-ms MS] [--user UID[:GID]]
  mitosis release HANDLE|-|@FILE [--force]
HANDLE is IP:PORT/ID/SECRET as printed by the program that prepared the snapshot.";

/// A failure with its exit code.
struct Fail(u8, String);

fn usage(msg: impl Into<String>) -> Fail {
    Fail(2, format!("{}\n{USAGE}", msg.into()))
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

/// `--name value` options after the subcommand.
struct Opts(Vec<(String, Option<String>)>);

impl Opts {
    fn parse(
        args: &[String],
        flags: &[&str],
        valued: &[&str],
    ) -> Result<(Opts, Vec<String>), Fail> {
        let mut opts = Vec::new();
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if flags.contains(&a.as_str()) {
                opts.push((a.clone(), None));
            } else if valued.contains(&a.as_str()) {
                let v = it
                    .next()
                    .ok_or_else(|| usage(format!("{a} needs a value")))?;
                opts.push((a.clone(), Some(v.clone())));
            } else if a.starts_with("--") {
                return Err(usage(format!("unknown option {a}")));
            } else {
                rest.push(a.clone());
            }
        }
        Ok((Opts(opts), rest))
    }
    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }
    fn size(&self, name: &str) -> Result<Option<u64>, Fail> {
        self.get(name)
            .map(|v| parse_size(v).ok_or_else(|| usage(format!("{name}: bad size '{v}'"))))
            .transpose()
    }
    fn num(&self, name: &str) -> Result<Option<u64>, Fail> {
        self.get(name)
            .map(|v| {
                let parsed = match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => v.parse().ok(),
                };
                parsed.ok_or_else(|| usage(format!("{name}: bad number '{v}'")))
            })
            .transpose()
    }
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

fn cmd_status(args: &[String]) -> Result<(), Fail> {
    let (o, rest) = Opts::parse(args, &["--json"], &[])?;
    if !rest.is_empty() {
        return Err(usage("status takes no arguments"));
    }
    let m = open()?;
    let v = m.version().map_err(|e| op("version", e))?;
    let s = m.status().map_err(|e| op("status", e))?;
    let counters: Vec<(&str, u64)> = s.counters.iter().collect();
    let devices: Vec<_> = s.devices[..s.n_devices as usize].iter().collect();
    if o.has("--json") {
        let devs: Vec<String> = devices
            .iter()
            .map(|d| {
                format!(
                    "{{\"name\":\"{}\",\"port_state\":{},\"max_fast_reg_page_list_len\":{},\"max_qp_rd_atom\":{}}}",
                    d.name_str(),
                    d.port_state,
                    d.max_fast_reg_page_list_len,
                    d.max_qp_rd_atom
                )
            })
            .collect();
        let ctrs: Vec<String> = counters
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        println!(
            "{{\"abi_version\":{},\"module_version\":\"{}\",\"listen_port\":{},\"connections\":{},\"devices\":[{}],\"counters\":{{{}}}}}",
            v.abi_version,
            v.module_version,
            s.listen_port,
            s.n_connections,
            devs.join(","),
            ctrs.join(",")
        );
        return Ok(());
    }
    println!(
        "module {} (ABI {}), listening on port {}",
        v.module_version, v.abi_version, s.listen_port
    );
    println!("devices: {}", if devices.is_empty() { "none" } else { "" });
    for d in &devices {
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
    for (k, v) in counters {
        println!("  {k:22} {v}");
    }
    Ok(())
}

fn cmd_region(args: &[String]) -> Result<(), Fail> {
    let (o, rest) = Opts::parse(args, &[], &["--size", "--seed"])?;
    let m = open()?;
    match rest.first().map(String::as_str) {
        Some("create") if rest.len() == 1 => {
            let size = o
                .size("--size")?
                .ok_or_else(|| usage("region create needs --size"))?;
            let seed = o.num("--seed")?.unwrap_or(1);
            let r = m
                .region_create(size, seed)
                .map_err(|e| op("region create", e))?;
            println!(
                "region {} secret {} size {size} seed {seed}",
                r.id,
                format_secret(&r.secret)
            );
            Ok(())
        }
        Some("destroy") if rest.len() == 2 => {
            let id = rest[1]
                .parse()
                .map_err(|_| usage("region destroy needs a numeric ID"))?;
            m.region_destroy(id).map_err(|e| op("region destroy", e))?;
            println!("region {id} destroyed");
            Ok(())
        }
        _ => Err(usage("region create|destroy")),
    }
}

fn parse_peer(s: &str) -> Option<(Ipv4Addr, u16)> {
    match s.split_once(':') {
        Some((ip, port)) => Some((ip.parse().ok()?, port.parse().ok()?)),
        None => Some((s.parse().ok()?, 0)),
    }
}

fn cmd_read(args: &[String]) -> Result<(), Fail> {
    let valued = [
        "--peer",
        "--region",
        "--secret",
        "--seed",
        "--offset",
        "--length",
        "--batch",
        "--timeout-ms",
    ];
    let (o, rest) = Opts::parse(args, &[], &valued)?;
    if !rest.is_empty() {
        return Err(usage("read takes only options"));
    }
    let (ip, port) = o
        .get("--peer")
        .and_then(parse_peer)
        .ok_or_else(|| usage("read needs --peer IP[:PORT]"))?;
    let id = o
        .num("--region")?
        .ok_or_else(|| usage("read needs --region ID"))?;
    let secret = o
        .get("--secret")
        .and_then(parse_secret)
        .ok_or_else(|| usage("read needs --secret with 32 hex digits"))?;
    let batch = o.num("--batch")?.unwrap_or(MAX_BATCH_PAGES as u64);
    if batch == 0 || batch > MAX_BATCH_PAGES as u64 {
        return Err(usage(format!("--batch must be 1..={MAX_BATCH_PAGES}")));
    }
    let timeout = o.num("--timeout-ms")?.map(Duration::from_millis);
    let m = open()?;
    let r = m
        .remote_open(ip, port, RegionId { id, secret }, timeout)
        .map_err(|e| op("open", e))?;
    let offset = o.size("--offset")?.unwrap_or(0);
    let length = o.size("--length")?.unwrap_or(r.size.saturating_sub(offset));
    println!(
        "opened region {id} on {ip}: {} bytes (connect {:.3} ms, open {:.3} ms)",
        r.size,
        r.connect_ns as f64 / 1e6,
        r.open_ns as f64 / 1e6
    );
    let mut buf = vec![0u8; length as usize];
    let chunk = 16usize << 20;
    let start = Instant::now();
    let mut reads = 0;
    for (i, part) in buf.chunks_mut(chunk).enumerate() {
        let off = offset + (i * chunk) as u64;
        let st = m
            .remote_read(r.handle, off, part, batch as u32, 0)
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
        "read {length} bytes in {reads} READs ({batch}/doorbell) in {:.3} s: {:.0} pages/s, {:.1} MiB/s",
        secs,
        reads as f64 / secs,
        length as f64 / secs / (1 << 20) as f64
    );
    if let Some(seed) = o.num("--seed")? {
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

/// The snapshot handle: the argument, or with `-` the first line of stdin, or with
/// `@PATH` the first line of a file (a handle carries the secret: on a command line it
/// is visible to every user in `ps` and `/proc/PID/cmdline`).
fn handle_arg(rest: &[String], cmd: &str) -> Result<SnapshotHandle, Fail> {
    let text = match rest {
        [h] if h == "-" => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| usage(format!("reading the handle from stdin: {e}")))?;
            line
        }
        [h] if h.starts_with('@') => std::fs::read_to_string(&h[1..])
            .map_err(|e| usage(format!("reading the handle from {}: {e}", &h[1..])))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        [h] => h.clone(),
        _ => return Err(usage(format!("{cmd} takes one HANDLE (or - or @FILE)"))),
    };
    text.parse()
        .map_err(|e: std::io::Error| usage(e.to_string()))
}

/// `UID[:GID]` (numeric; the gid defaults to the uid). Root (0) is refused: the point
/// is to give up privilege.
fn parse_identity(text: &str) -> Result<Identity, Fail> {
    let bad = || {
        usage(format!(
            "--user: '{text}' is not UID[:GID] with non-zero numbers"
        ))
    };
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

/// Becomes a child of the snapshot; returns only on failure.
fn cmd_resume(args: &[String]) -> Result<(), Fail> {
    let (o, rest) = Opts::parse(args, &["--eager"], &["--timeout-ms", "--user"])?;
    let handle = handle_arg(&rest, "resume")?;
    let opts = ResumeOptions {
        eager: o.has("--eager"),
        connect_timeout: o.num("--timeout-ms")?.map(Duration::from_millis),
        user: o.get("--user").map(parse_identity).transpose()?,
    };
    let m = open()?;
    Err(op(
        &format!("resume from {handle}"),
        m.fork_resume(&handle, opts),
    ))
}

fn cmd_release(args: &[String]) -> Result<(), Fail> {
    let (o, rest) = Opts::parse(args, &["--force"], &[])?;
    let handle = handle_arg(&rest, "release")?;
    open()?
        .fork_release(&handle, o.has("--force"))
        .map_err(|e| op("release", e))?;
    println!("released snapshot {}", handle.id);
    Ok(())
}

fn run(args: &[String]) -> Result<(), Fail> {
    match args.first().map(String::as_str) {
        Some("version") => {
            let v = open()?.version().map_err(|e| op("version", e))?;
            println!(
                "mitosis module {} ABI {} (tool ABI {})",
                v.module_version,
                v.abi_version,
                mitosis_abi::ioctl::ABI_VERSION
            );
            Ok(())
        }
        Some("status") => cmd_status(&args[1..]),
        Some("region") => cmd_region(&args[1..]),
        Some("read") => cmd_read(&args[1..]),
        Some("resume") => cmd_resume(&args[1..]),
        Some("release") => cmd_release(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(usage("unknown command")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("mitosis: {msg}");
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(id("0"), None);
        assert_eq!(id("1000:0"), None);
        assert_eq!(id("nobody"), None);
        assert_eq!(id("1000:"), None);
        assert_eq!(id("-1"), None);
    }

    use super::*;

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
    fn options_reject_unknown_and_missing_values() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Opts::parse(&a(&["--bogus"]), &[], &[]).is_err());
        assert!(Opts::parse(&a(&["--size"]), &[], &["--size"]).is_err());
        let (o, rest) = Opts::parse(&a(&["create", "--size", "4K"]), &[], &["--size"])
            .ok()
            .unwrap();
        assert_eq!(rest, vec!["create"]);
        assert_eq!(o.size("--size").ok().flatten(), Some(4096));
    }

    #[test]
    fn handles_from_a_file_keep_the_secret_off_the_command_line() {
        let h = "10.0.0.1:18515/7/00112233445566778899aabbccddeeff";
        let path = std::env::temp_dir().join(format!("mitosis-handle-{}", std::process::id()));
        std::fs::write(&path, format!("{h}\nignored\n")).unwrap();
        let arg = vec![format!("@{}", path.display())];
        let parsed = handle_arg(&arg, "resume").ok().unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(parsed.to_string(), h);
        assert!(handle_arg(&["@/nonexistent/handle".to_string()], "resume").is_err());
        assert!(handle_arg(&[], "resume").is_err());
    }
}
