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
}
