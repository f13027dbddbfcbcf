//! The agent on guest A: a line protocol over TCP on the guests' link, so the driver on
//! B can make A publish and destroy regions and run commands (rmmod, insmod).
//!
//! ```text
//! create SIZE SEED   -> ok ID SECRET | err ERRNO
//! destroy ID         -> ok | err ERRNO
//! sh COMMAND...      -> ok EXIT_STATUS
//! prepare            -> ok HANDLE (a snapshot of the agent; its children exit 42)
//! cpu                -> ok USER NICE SYSTEM IDLE IOWAIT IRQ SOFTIRQ (ticks, /proc/stat)
//! quit               -> ok (and the agent exits)
//! ```

use mitosis::{format_secret, Forked, Mitosis};

/// Exit status of a child resumed from the agent's snapshot (`prepare`).
pub const RESUMED_AGENT_EXIT: i32 = 42;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Command, ExitCode};

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn handle(line: &str) -> (String, bool) {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["create", size, seed] => {
            let (Ok(size), Ok(seed)) = (size.parse(), seed.parse()) else {
                return ("err 22".into(), false);
            };
            match Mitosis::open().and_then(|m| m.region_create(size, seed)) {
                Ok(r) => (format!("ok {} {}", r.id, format_secret(&r.secret)), false),
                Err(e) => (format!("err {}", errno_of(&e)), false),
            }
        }
        ["destroy", id] => {
            let Ok(id) = id.parse() else {
                return ("err 22".into(), false);
            };
            match Mitosis::open().and_then(|m| m.region_destroy(id)) {
                Ok(()) => ("ok".into(), false),
                Err(e) => (format!("err {}", errno_of(&e)), false),
            }
        }
        ["sh", ..] => {
            let cmd = line.trim_start().trim_start_matches("sh").trim();
            println!("agent: running '{cmd}'");
            let status = Command::new("/bin/sh").arg("-c").arg(cmd).status();
            match status {
                Ok(s) => (format!("ok {}", s.code().unwrap_or(-1)), false),
                Err(e) => (format!("err {}", errno_of(&e)), false),
            }
        }
        // Snapshots this agent (a small, real seed for the adversarial scenario). A
        // child resumed from it exits at once with status 42.
        ["prepare"] => prepare(0),
        // The same with MIB MiB of patterned memory that the child reads back (exit 43
        // on a difference): a child that keeps faulting for a while.
        ["prepare", mib] => prepare(mib.parse().unwrap_or(0)),
        ["cpu"] => match crate::report::cpu_ticks() {
            Some(t) => (format!("ok {}", t.map(|v| v.to_string()).join(" ")), false),
            None => ("err 5".into(), false),
        },
        ["quit"] => ("ok".into(), true),
        _ => ("err 22".into(), false),
    }
}

/// Snapshots this agent holding `mib` MiB of pattern; see `handle`.
fn prepare(mib: usize) -> (String, bool) {
    let words: Vec<u64> = (0..(mib << 17) as u64)
        .map(|i| mitosis_abi::ioctl::pattern_word(9, 8 * i))
        .collect();
    match Mitosis::open().and_then(|m| m.fork_prepare()) {
        Ok(Forked::Parent(p)) => (format!("ok {}", p.handle), false),
        Ok(Forked::Child(_)) => {
            let intact = words
                .iter()
                .enumerate()
                .all(|(i, &w)| w == mitosis_abi::ioctl::pattern_word(9, 8 * i as u64));
            std::process::exit(if intact { RESUMED_AGENT_EXIT } else { 43 })
        }
        Err(e) => (format!("err {}", errno_of(&e)), false),
    }
}

/// Serves one driver connection at a time until `quit`.
pub fn serve(port: u16) -> ExitCode {
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("agent: cannot listen on {port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("agent: listening on port {port}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let Ok(mut out) = stream.try_clone() else {
            continue;
        };
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let (reply, quit) = handle(&line);
            if writeln!(out, "{reply}").is_err() {
                break;
            }
            if quit {
                println!("agent: quit");
                return ExitCode::SUCCESS;
            }
        }
    }
    ExitCode::FAILURE
}
