//! `mitosis-test`: the scenario programs run inside the test guests.
//!
//! ```text
//! mitosis-test local [--device rxe0]        scenario 1 on this guest
//! mitosis-test abi                          scenario 5 (malformed ioctls) on this guest
//! mitosis-test agent [--port 7000]          on guest A: serves the driver's requests
//! mitosis-test driver --peer IP [--port 7000] [--size 64M]
//!                                           on guest B: scenarios 2, 3, 4 against A
//! mitosis-test fork-parent [--port 7001] [--children 4] [--mib 32]
//!                                           on guest A: remote-fork seed and parent
//! mitosis-test fork-remote --peer IP [--port 7001] [--children 4]
//!                                           on guest B: children and failure cases
//! mitosis-test fork-demo-parent [--mib 48] [--children 2]   make demo, guest A
//! mitosis-test fork-demo-remote --peer IP [--children 2]    make demo, guest B
//! mitosis-test bench-parent [--sizes 1,64,1024] [--burst 8]  make bench, guest A
//! mitosis-test bench-remote --peer IP [--burst 8]            make bench, guest B
//! mitosis-test bench-cold --mib N           cold start of the benchmark program
//! mitosis-test bench-sparse-seed --reserve-mib N [--heap-mib M]
//!                                           prepare a 64 KiB (M MiB) seed with an N MiB
//!                                           sparse reservation (16 pages touched), print
//!                                           times
//! mitosis-test adversarial --peer IP        on guest B: hostile peers and parents
//!                                           against A (see adversarial.rs)
//! mitosis-test ioctl-fuzz [N] [SEED]        N random ioctls on this guest's module
//! mitosis-test fault-inject prepare|resume [HANDLE]
//!                                           allocation failures injected over them
//! mitosis-test resume-expect HANDLE ERRNO|child
//!                                           resume; exit 0 if refused with ERRNO
//! ```
//! Every check prints one `MITOSIS-RESULT {json}` line; the exit status is non-zero if
//! any check failed.

mod abi_checks;
mod adversarial;
mod agent;
mod bench;
mod driver;
mod fork;
mod profile;
mod report;

use std::process::ExitCode;

pub const AGENT_PORT: u16 = 7000;

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// `--name N`, or `default` when absent or not a number.
fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    arg_value(args, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `--peer IP`, with a message when it is missing.
fn peer_arg(args: &[String]) -> Option<std::net::Ipv4Addr> {
    let peer = arg_value(args, "--peer").and_then(|p| p.parse().ok());
    if peer.is_none() {
        eprintln!("mitosis-test {}: --peer IP required", args[0]);
    }
    peer
}

/// Prints the summary; a failed check fails the run whatever `code` says.
fn finish(report: &report::Report, code: ExitCode) -> ExitCode {
    report.summary();
    if report.failed == 0 {
        code
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let guest = std::env::var("MROLE").unwrap_or_else(|_| "guest".into());
    let mut report = report::Report::new(&guest);
    let port = arg_value(&args, "--port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(AGENT_PORT);
    match args.first().map(String::as_str) {
        Some("local") => {
            let dev = arg_value(&args, "--device").unwrap_or_else(|| "rxe0".into());
            driver::local(&mut report, &dev);
        }
        Some("abi") => abi_checks::run(&mut report),
        Some("agent") => return agent::serve(port),
        Some("driver") => {
            let Some(peer) = arg_value(&args, "--peer").and_then(|p| p.parse().ok()) else {
                eprintln!("mitosis-test driver: --peer IP required");
                return ExitCode::from(2);
            };
            let size = arg_value(&args, "--size")
                .and_then(|s| s.trim_end_matches('M').parse::<u64>().ok())
                .unwrap_or(64)
                << 20;
            driver::run(&mut report, peer, port, size);
        }
        Some("fork-parent") => {
            let code = fork::parent(
                &mut report,
                num(&args, "--port", 7001),
                num(&args, "--children", 4),
                num(&args, "--mib", 32),
            );
            return finish(&report, code);
        }
        Some("fork-remote") => {
            let Some(peer) = peer_arg(&args) else {
                return ExitCode::from(2);
            };
            let code = fork::remote(
                &mut report,
                peer,
                num(&args, "--port", 7001),
                num(&args, "--children", 4),
            );
            return finish(&report, code);
        }
        Some("fork-demo-parent") => {
            let code = bench::demo_parent(
                &mut report,
                num(&args, "--mib", 48),
                num(&args, "--children", 2),
            );
            return finish(&report, code);
        }
        Some("fork-demo-remote") => {
            let Some(peer) = peer_arg(&args) else {
                return ExitCode::from(2);
            };
            let code = bench::demo_remote(&mut report, peer, num(&args, "--children", 2));
            return finish(&report, code);
        }
        Some("bench-parent") => {
            let sizes: Vec<usize> = arg_value(&args, "--sizes")
                .unwrap_or_else(|| "1,64,1024".into())
                .split(',')
                .filter_map(|s| s.parse().ok())
                .collect();
            let code = bench::bench_parent(&mut report, &sizes, num(&args, "--burst", 8));
            return finish(&report, code);
        }
        Some("bench-remote") => {
            let Some(peer) = peer_arg(&args) else {
                return ExitCode::from(2);
            };
            let code = bench::bench_remote(&mut report, peer, num(&args, "--burst", 8));
            return finish(&report, code);
        }
        Some("bench-cold") => return bench::cold(num(&args, "--mib", 1)),
        Some("bench-link-server") => return bench::serve_link(),
        Some("bench-sparse-seed") => {
            return bench::sparse_seed(num(&args, "--reserve-mib", 0), num(&args, "--heap-mib", 0))
        }
        Some("adversarial") => {
            let Some(peer) = peer_arg(&args) else {
                return ExitCode::from(2);
            };
            let Some(me) = std::env::var("MIP").ok().and_then(|a| a.parse().ok()) else {
                eprintln!("mitosis-test adversarial: MIP (this guest's address) not set");
                return ExitCode::from(2);
            };
            let code = adversarial::drive(&mut report, peer, me);
            return finish(&report, code);
        }
        Some("launch-dirty") => {
            let Some(h) = args.get(1) else {
                return ExitCode::from(2);
            };
            return fork::launch_dirty(h);
        }
        Some("ioctl-fuzz") => {
            let n = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
            let seed = args
                .get(2)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0x6d69_746f);
            return adversarial::ioctl_fuzz(n, seed);
        }
        Some("fault-inject") => {
            let Some(what) = args.get(1) else {
                return ExitCode::from(2);
            };
            let code =
                adversarial::fault_inject(&mut report, what, args.get(2).map(String::as_str));
            return finish(&report, code);
        }
        Some("resume-expect") => {
            let (Some(h), Some(want)) = (args.get(1), args.get(2)) else {
                return ExitCode::from(2);
            };
            return adversarial::resume_expect(h, want);
        }
        Some("launch-with-vdso-at") => {
            let (Some(addr), Some(h)) = (args.get(1).and_then(|a| a.parse().ok()), args.get(2))
            else {
                return ExitCode::from(2);
            };
            return fork::launch_with_vdso_at(addr, h);
        }
        _ => {
            eprintln!("usage: mitosis-test local|abi|agent|driver|fork-parent|fork-remote (see the source header)");
            return ExitCode::from(2);
        }
    }
    report.summary();
    if report.failed == 0 && report.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
