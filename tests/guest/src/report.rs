//! Machine-readable results: one `MITOSIS-RESULT {json}` line per check on stdout
//! (the guest console), collected by `scripts/vmrun.py`.

use std::fmt::Write;

#[derive(Default)]
pub struct Report {
    pub guest: String,
    pub passed: usize,
    pub failed: usize,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

impl Report {
    pub fn new(guest: &str) -> Self {
        Report {
            guest: guest.to_string(),
            ..Default::default()
        }
    }

    /// Records one check with its numbers.
    pub fn check(
        &mut self,
        name: &str,
        pass: bool,
        detail: impl AsRef<str>,
        metrics: &[(&str, f64)],
    ) -> bool {
        if pass {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        let mut m = String::new();
        for (k, v) in metrics {
            let _ = write!(
                m,
                ",\"{}\":{}",
                escape(k),
                if v.is_finite() {
                    format!("{v:.3}")
                } else {
                    "null".into()
                }
            );
        }
        println!(
            "MITOSIS-RESULT {{\"guest\":\"{}\",\"check\":\"{}\",\"pass\":{},\"detail\":\"{}\"{}}}",
            escape(&self.guest),
            escape(name),
            pass,
            escape(detail.as_ref()),
            m
        );
        pass
    }

    pub fn summary(&self) {
        println!(
            "mitosis-test {}: {} passed, {} failed",
            self.guest, self.passed, self.failed
        );
    }
}

/// This guest's busy CPU time since boot, in nanoseconds: the monotonic clock times
/// the CPUs, less the idle and iowait time the tick code accounts to the nanosecond
/// at every idle exit (`.idle_sleeptime`, `.iowait_sleeptime` of `/proc/timer_list`,
/// the numbers `/proc/stat` rounds to 10 ms). The caller runs, so its CPU is not
/// idle and its numbers are current.
pub fn busy_ns() -> Option<u64> {
    let now = mitosis::fork::monotonic_ns();
    let list = std::fs::read_to_string("/proc/timer_list").ok()?;
    busy_of(now, &list)
}

/// [`busy_ns`] from the monotonic clock `now` and the text of `/proc/timer_list`.
fn busy_of(now: u64, list: &str) -> Option<u64> {
    // One `.idle_sleeptime` and one `.iowait_sleeptime` line per CPU.
    let (mut cpus, mut idle) = (0u64, 0u64);
    for l in list.lines() {
        let l = l.trim_start();
        let Some(rest) = l
            .strip_prefix(".idle_sleeptime")
            .or_else(|| l.strip_prefix(".iowait_sleeptime"))
        else {
            continue;
        };
        let ns: u64 = rest
            .trim_start_matches([' ', ':'])
            .strip_suffix(" nsecs")?
            .trim()
            .parse()
            .ok()?;
        idle = idle.checked_add(ns)?;
        cpus += u64::from(l.starts_with(".idle"));
    }
    (cpus > 0).then_some(())?;
    now.checked_mul(cpus)?.checked_sub(idle)
}

/// This guest's CPU time so far, from the first line of `/proc/stat`: user, nice,
/// system, idle, iowait, irq, softirq (clock ticks).
pub fn cpu_ticks() -> Option<[u64; 7]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut words = stat.lines().next()?.split_whitespace();
    if words.next()? != "cpu" {
        return None;
    }
    let mut ticks = [0u64; 7];
    for t in ticks.iter_mut() {
        *t = words.next()?.parse().ok()?;
    }
    Some(ticks)
}

/// Percentages of the time between two [`cpu_ticks`] samples spent in the kernel
/// (system, irq, softirq) and in user space, or `None` if no tick passed.
pub fn cpu_shares(before: [u64; 7], after: [u64; 7]) -> Option<(f64, f64)> {
    let d: Vec<f64> = after
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(b) as f64)
        .collect();
    let total: f64 = d.iter().sum();
    (total > 0.0).then(|| {
        (
            100.0 * (d[2] + d[5] + d[6]) / total,
            100.0 * (d[0] + d[1]) / total,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_json() {
        assert_eq!(escape("a\"b\\c\n"), "a\\\"b\\\\c\\u000a");
    }

    #[test]
    fn counts() {
        let mut r = Report::new("t");
        assert!(r.check("a", true, "", &[("x", 1.0)]));
        assert!(!r.check("b", false, "why", &[]));
        assert_eq!((r.passed, r.failed), (1, 1));
    }

    #[test]
    fn busy_time_from_timer_list() {
        // Two CPUs, as `kernel/time/timer_list.c` prints them (other lines elided).
        let list = "cpu: 0\n  .idle_sleeptime : 700 nsecs\n  .iowait_sleeptime: 50 nsecs\n\
                    jiffies: 1\ncpu: 1\n  .idle_sleeptime : 900 nsecs\n\
                    .iowait_sleeptime: 0 nsecs\n";
        // 2 x 1000 ns of CPU time, 1650 of it idle or waiting.
        assert_eq!(super::busy_of(1000, list), Some(350));
        assert_eq!(super::busy_of(1000, "no tick lines"), None);
        assert_eq!(super::busy_of(1000, "  .idle_sleeptime : x nsecs\n"), None);
        // More idle than time passed cannot be.
        assert_eq!(super::busy_of(100, list), None);
    }

    #[test]
    fn cpu_shares_split_kernel_and_user() {
        let before = [100, 0, 50, 800, 0, 0, 10, 0][..7].try_into().unwrap();
        let after = [130, 10, 90, 820, 0, 5, 15, 0][..7].try_into().unwrap();
        // 40 user, 50 kernel (40 system + 5 irq + 5 softirq), 20 idle: 110 ticks.
        let (kernel, user) = super::cpu_shares(before, after).unwrap();
        assert!((kernel - 100.0 * 50.0 / 110.0).abs() < 1e-9);
        assert!((user - 100.0 * 40.0 / 110.0).abs() < 1e-9);
        assert!(super::cpu_shares(after, after).is_none());
    }
}
