//! The Python package's view of the C ABI (`python/mitosis`, ctypes) against the Rust
//! definitions: struct sizes, offsets and the counter names in ABI order. Then the
//! package's own host tests (python/tests), against the shared library built here.

use core::mem::{offset_of, size_of};
use mitosis::capi::ResumeReport;
use mitosis_abi::ioctl::{Counters, DeviceInfo, StatusArgs};
use std::path::PathBuf;
use std::process::Command;

const PYTHON: &str = "/usr/bin/python3.11";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// libmitosis.so of this build (`cargo build` makes it; `make test-host` runs that first).
fn shared_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/python_abi-HASH
    let lib = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("libmitosis.so");
    assert!(
        lib.exists(),
        "{} missing: run `cargo build --workspace` first",
        lib.display()
    );
    lib
}

fn python(args: &[&str]) -> std::process::Output {
    Command::new(PYTHON)
        .args(args)
        .env("MITOSIS_LIBRARY", shared_library())
        .env("PYTHONPATH", root().join("python"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e} (scripts/setup.sh installs it)"))
}

#[test]
fn ctypes_layout_matches_rust() {
    let out = python(&[
        "-c",
        "import json, mitosis; print(json.dumps(mitosis._layout()))",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let num = |key: &str| -> usize {
        let at = text.find(&format!("\"{key}\": ")).expect(key) + key.len() + 4;
        text[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(num("status_size"), size_of::<StatusArgs>());
    assert_eq!(num("counters_offset"), offset_of!(StatusArgs, counters));
    assert_eq!(num("devices_offset"), offset_of!(StatusArgs, devices));
    assert_eq!(num("device_size"), size_of::<DeviceInfo>());
    let names: Vec<String> = Counters::NAMES.iter().map(|n| format!("\"{n}\"")).collect();
    assert!(
        text.contains(&format!("\"counters\": [{}]", names.join(", "))),
        "counter names differ from Rust: {text}"
    );
    let offsets: Vec<String> = (0..Counters::NAMES.len())
        .map(|i| (8 * i).to_string())
        .collect();
    assert!(text.contains(&format!("\"counter_offsets\": [{}]", offsets.join(", "))));
    assert_eq!(num("resumed_size"), size_of::<ResumeReport>());
    // Every field a u64, in this order (the C asserts check the Rust offsets).
    assert_eq!(size_of::<ResumeReport>(), 8 * 9);
    assert!(
        text.contains(
            "\"resumed_fields\": [\"resume_start_ns\", \"resume_ns\", \"in_module_ns\", \"connect_ns\", \"open_ns\", \"fetch_ns\", \"eager_pages\", \"prefetched_pages\", \"round_trips\"]"
        ),
        "resume report fields differ: {text}"
    );
    assert_eq!(offset_of!(ResumeReport, round_trips), 8 * 8);
}

#[test]
fn python_package_host_tests() {
    let out = python(&["-m", "unittest", "discover", "-v", "-s", "python/tests"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("OK"), "{err}");
}
