//! CPU profiles of this guest during a benchmark phase (`make KVARIANT=perf bench
//! BENCH_PROFILE=1`, docs/benchmarks.md): `perf record -a` of `cpu-clock` samples
//! while the phase runs, summarised by where they fell: idle, the mitosis module, the
//! software RDMA device and the RDMA core (rxe and its ICRC), the network stack under
//! it, task switches and softirqs, the rest of the kernel, user space. It shows what
//! bounds a phase that keeps the guest's CPU busy.

use crate::report::Report;
use std::process::{Child, Command, Stdio};

/// Where the benchmark's runs get perf (the image fragment of
/// `scripts/build-perf.sh`).
const PERF: &str = "/usr/bin/perf";
/// Sampling frequency (Hz): about 1 kHz, a prime so that samples do not fall in step
/// with the timer tick.
const FREQ: &str = "997";
/// Symbols listed in a summary's detail.
const TOP: usize = 12;

/// A recording in progress: stopped by [`Profile::finish`], or when dropped (a phase
/// that ended early), so no perf outlives its phase.
pub struct Profile {
    perf: Child,
    /// `perf` has been signalled and reaped.
    stopped: bool,
    name: String,
    data: String,
}

impl Profile {
    /// Starts recording every CPU of this guest when the run asks for profiles
    /// (`MPROFILE=1`) and perf is in the image; `None` otherwise.
    pub fn start(name: &str) -> Option<Profile> {
        if std::env::var("MPROFILE").ok()? != "1" || !std::path::Path::new(PERF).exists() {
            return None;
        }
        let data = format!("/tmp/profile-{name}.data");
        let perf = Command::new(PERF)
            .args(["record", "-a", "-e", "cpu-clock", "-F", FREQ, "-o", &data])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf samples from when it has opened its events: give it the moment.
        std::thread::sleep(std::time::Duration::from_millis(300));
        Some(Profile {
            perf,
            stopped: false,
            name: name.to_string(),
            data,
        })
    }

    /// Ends the recording (perf writes its data on SIGINT, then exits with the
    /// signal's status); whether perf was reaped.
    fn stop(&mut self) -> bool {
        if !self.stopped {
            self.stopped = true;
            // SAFETY: signals our own child, which is not reaped yet.
            unsafe { libc::kill(self.perf.id() as i32, libc::SIGINT) };
            return self.perf.wait().is_ok();
        }
        true
    }

    /// Stops the recording and reports its summary as check `bench-profile-NAME`.
    pub fn finish(mut self, r: &mut Report) {
        let stopped = self.stop();
        let report = Command::new(PERF)
            .args([
                "report",
                "-i",
                &self.data,
                "--stdio",
                "--no-children",
                "-g",
                "none",
            ])
            .args([
                "--sort",
                "dso,sym",
                "-F",
                "overhead,sample,dso,sym",
                "-t",
                "|",
            ])
            .args(["--percent-limit", "0"])
            .stderr(Stdio::null())
            .output();
        let text = report
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let s = summarise(&text);
        let pct = |part: u64, of: u64| {
            if of == 0 {
                f64::NAN
            } else {
                100.0 * part as f64 / of as f64
            }
        };
        let busy = s.total.saturating_sub(s.idle);
        let top: Vec<String> = s
            .top
            .iter()
            .map(|(sym, n)| format!("{sym} {:.1}%", pct(*n, busy)))
            .collect();
        r.check(
            &format!("bench-profile-{}", self.name),
            stopped && s.total > 0,
            format!(
                "perf record -a, cpu-clock at {FREQ} Hz; busy samples by symbol: {}",
                top.join(", ")
            ),
            &[
                ("samples", s.total as f64),
                ("busy_pct", pct(busy, s.total)),
                ("module_pct_of_busy", pct(s.module, busy)),
                ("rdma_pct_of_busy", pct(s.rdma, busy)),
                ("network_pct_of_busy", pct(s.network, busy)),
                ("scheduling_pct_of_busy", pct(s.scheduling, busy)),
                ("user_pct_of_busy", pct(s.user, busy)),
                (
                    "kernel_other_pct_of_busy",
                    pct(busy.saturating_sub(s.classified()), busy),
                ),
            ],
        );
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.data);
    }
}

/// Samples of a profile by where they fell.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub total: u64,
    /// In the idle loop (the CPU had nothing to run).
    pub idle: u64,
    /// In the mitosis module.
    pub module: u64,
    /// In the software RDMA device and the RDMA core: `rxe_*`, `ib_*`, `rdma_*`, and
    /// the CRC that rxe computes for every packet (its ICRC).
    pub rdma: u64,
    /// In the network stack under rxe ([`is_network`]).
    pub network: u64,
    /// Switching tasks, waking them, running work items and softirqs
    /// ([`is_scheduling`]).
    pub scheduling: u64,
    /// In user space.
    pub user: u64,
    /// The busiest symbols outside the idle loop, busiest first (at most [`TOP`]).
    pub top: Vec<(String, u64)>,
}

impl Summary {
    /// Busy samples in a named part (all but the rest of the kernel).
    fn classified(&self) -> u64 {
        self.module + self.rdma + self.network + self.scheduling + self.user
    }
}

/// The idle loop's symbols (where a sample lands while the CPU halts or polls).
fn is_idle(sym: &str) -> bool {
    [
        "__cpuidle_text_start",
        "do_idle",
        "cpuidle_idle_call",
        "default_idle",
        "default_idle_call",
        "native_safe_halt",
        "pv_native_safe_halt",
        "cpu_idle_poll",
        "poll_idle",
        "acpi_safe_halt",
    ]
    .contains(&sym)
        || sym.starts_with("acpi_idle")
        || sym.starts_with("mwait_idle")
        || sym.starts_with("intel_idle")
}

/// Whether `sym` starts with one of `prefixes`.
fn named(sym: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| sym.starts_with(p))
}

fn is_rdma(sym: &str) -> bool {
    named(sym, &["rxe_", "ib_", "__ib_", "rdma_", "crc32", "__crc32"])
}

/// The network stack under rxe: socket buffers, UDP/IP, the virtio NIC and its
/// softirq (by name prefix: a heuristic, documented as one).
fn is_network(sym: &str) -> bool {
    named(
        sym,
        &[
            "skb_",
            "__skb_",
            "kfree_skb",
            "consume_skb",
            "pskb_",
            "__pskb_",
            "napi_",
            "__napi_",
            "net_rx_action",
            "netif_",
            "__netif_",
            "gro_",
            "dev_",
            "__dev_",
            "udp",
            "__udp",
            "ip_",
            "__ip_",
            "neigh_",
            "___neigh_",
            "virtnet_",
            "virtqueue_",
            "vring_",
            "vp_notify",
            "sock_",
            "sk_",
            "__sk_",
            "eth_",
            "validate_xmit",
        ],
    )
}

/// Task switches, wake-ups and the work-queue and softirq machinery (a heuristic, as
/// above). Time with interrupts off lands on the instruction that turns them back on,
/// often in `finish_task_switch`.
fn is_scheduling(sym: &str) -> bool {
    named(
        sym,
        &[
            "finish_task_switch",
            "__schedule",
            "schedule",
            "__switch_to",
            "try_to_wake_up",
            "ttwu_",
            "enqueue_",
            "dequeue_",
            "pick_next_",
            "update_curr",
            "update_load_avg",
            "__wake_up",
            "wake_up",
            "complete",
            "process_one_work",
            "process_scheduled_works",
            "worker_thread",
            "queue_work",
            "__queue_work",
            "handle_softirqs",
            "__do_softirq",
            "irq_exit",
            "__irq_exit",
            "_raw_spin_unlock_irq",
        ],
    )
}

/// Summarises the text of `perf report --sort dso,sym -F overhead,sample,dso,sym -t
/// '|'`: lines `OVERHEAD|SAMPLES|DSO|[k] SYMBOL` (`[.]` for user space); comment
/// lines start with `#`.
pub fn summarise(text: &str) -> Summary {
    let mut s = Summary::default();
    let mut busy: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut f = line.split('|').map(str::trim);
        let (Some(_), Some(n), Some(dso), Some(sym)) = (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else {
            continue;
        };
        let (user, name) = match sym.split_once(' ') {
            Some(("[.]", name)) => (true, name.trim()),
            Some((_, name)) => (false, name.trim()),
            None => (false, sym),
        };
        s.total += n;
        if !user && is_idle(name) {
            s.idle += n;
            continue;
        }
        if user {
            s.user += n;
        } else if dso == "[mitosis]" {
            s.module += n;
        } else if is_rdma(name) {
            s.rdma += n;
        } else if is_network(name) {
            s.network += n;
        } else if is_scheduling(name) {
            s.scheduling += n;
        }
        busy.push((name.to_string(), n));
    }
    busy.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    busy.truncate(TOP);
    s.top = busy;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_split_by_where_samples_fell() {
        let text = "\
# To display the perf.data header info, please use --header/--header-only options.
#
# Samples: 2K of event 'cpu-clock:ppp'
#
  41.60%|820|[kernel.kallsyms]|[k] __cpuidle_text_start
   2.23%|44|[kernel.kallsyms]|[k] rxe_mr_copy
   1.11%|22|[kernel.kallsyms]|[k] crc32_body
   2.05%|40|[kernel.kallsyms]|[k] exc_page_fault
   0.47%|9|[mitosis]|[k] _RNvMs1_NtCs2S0SIgceVIo_12mitosis_main5pagerNtB5_5Pager4fill
   0.82%|16|mitosis-test|[.] mitosis_test::bench::scatter_child
   1.29%|25|[kernel.kallsyms]|[k] __ib_process_cq
   1.00%|19|[kernel.kallsyms]|[k] skb_copy_bits
   2.00%|39|[kernel.kallsyms]|[k] finish_task_switch.isra.0
garbage line
";
        let s = summarise(text);
        assert_eq!(s.total, 976 + 19 + 39);
        assert_eq!(s.idle, 820);
        assert_eq!(s.rdma, 44 + 22 + 25);
        assert_eq!(s.network, 19);
        assert_eq!(s.scheduling, 39);
        assert_eq!(s.module, 9);
        assert_eq!(s.user, 16);
        assert_eq!(s.classified() + 40, s.total - s.idle);
        assert_eq!(s.top.first(), Some(&("rxe_mr_copy".to_string(), 44)));
        assert_eq!(s.top.len(), 8);
        assert!(!s.top.iter().any(|(sym, _)| sym == "__cpuidle_text_start"));
    }

    #[test]
    fn nothing_recorded_is_an_empty_summary() {
        assert_eq!(summarise(""), Summary::default());
        assert_eq!(summarise("# only comments\n"), Summary::default());
    }
}
