//! The C ABI as a C program sees it: `lib/include/mitosis.h` compiled with
//! `_Static_assert`s whose numbers come from the Rust definitions (every field offset
//! and struct size of the status structs, every constant), linked against the shared
//! library `libmitosis.so`, and run (the calls that need no module).

use core::mem::{offset_of, size_of};
use mitosis::capi::ResumeReport;
use mitosis_abi::ioctl::{
    release_flags, resume_flags, Counters, DeviceInfo, Header, StatusArgs, MAX_DEVICES,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The C asserts: every field the header declares, at the offset Rust has.
fn layout_asserts() -> String {
    let mut c = String::new();
    let mut check = |expr: String, value: usize| {
        writeln!(
            c,
            "_Static_assert({expr} == {value}, \"{expr} differs from Rust ({value})\");"
        )
        .unwrap();
    };
    // C `struct $c`'s size and each listed field's offset (same names in C and Rust).
    macro_rules! layout {
        ($c:literal, $ty:ty, [$($field:ident),* $(,)?]) => {
            check(format!("sizeof(struct {})", $c), size_of::<$ty>());
            $(check(
                format!("offsetof(struct {}, {})", $c, stringify!($field)),
                offset_of!($ty, $field),
            );)*
        };
    }
    layout!("mitosis_header", Header, [abi_version, size]);
    layout!(
        "mitosis_device_info",
        DeviceInfo,
        [name, port_state, max_fast_reg_page_list_len, max_qp_rd_atom]
    );
    check(
        "sizeof(struct mitosis_counters)".into(),
        size_of::<Counters>(),
    );
    // The counters are declared once (`counters!`): u64 each, in ABI order.
    for (i, name) in Counters::NAMES.iter().enumerate() {
        check(format!("offsetof(struct mitosis_counters, {name})"), 8 * i);
    }
    layout!(
        "mitosis_status",
        StatusArgs,
        [
            hdr,
            n_devices,
            n_connections,
            listen_port,
            devices,
            counters
        ]
    );
    layout!(
        "mitosis_resumed",
        ResumeReport,
        [
            resume_start_ns,
            resume_ns,
            in_module_ns,
            connect_ns,
            open_ns,
            fetch_ns,
            eager_pages,
            prefetched_pages,
            round_trips,
        ]
    );
    check("MITOSIS_MAX_DEVICES".into(), MAX_DEVICES);
    check("MITOSIS_RESUME_EAGER".into(), resume_flags::EAGER as usize);
    check(
        "MITOSIS_RELEASE_FORCE".into(),
        release_flags::FORCE as usize,
    );
    // The longest handle text: "255.255.255.255:65535/<u64>/<32 hex>/<u64>" and its NUL.
    check(
        "(MITOSIS_HANDLE_MAX >= 15 + 1 + 5 + 1 + 20 + 1 + 32 + 1 + 20 + 1)".into(),
        1,
    );
    c
}

const PROGRAM: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "mitosis.h"

int main(void)
{
	struct mitosis *m = NULL;
	struct mitosis_status st;
	struct mitosis_resumed resumed;
	char handle[MITOSIS_HANDLE_MAX];

	/* No module on the build host: the device is missing. */
	int r = mitosis_open(&m);
	if (r != -ENOENT && r != 0) {
		printf("mitosis_open: %d\n", r);
		return 1;
	}
	/* Argument checks come before any use of the device. */
	if (mitosis_status(NULL, &st, sizeof(st)) != -EINVAL ||
	    mitosis_fork_prepare(NULL, handle, sizeof(handle)) != -EINVAL ||
	    mitosis_fork_resume(NULL, "169.254.77.1:18515/1/00000000000000000000000000000000",
				MITOSIS_RESUME_EAGER) != -EINVAL) {
		printf("NULL handles not refused\n");
		return 1;
	}
	/* This process was not resumed: no report; bad arguments first. */
	if (mitosis_resumed(NULL, sizeof(resumed)) != -EINVAL ||
	    mitosis_resumed(&resumed, 4) != -EINVAL ||
	    mitosis_resumed(&resumed, sizeof(resumed)) != -ENOENT) {
		printf("mitosis_resumed outside a child not refused\n");
		return 1;
	}
	if (m) {
		if (mitosis_status(m, &st, offsetof(struct mitosis_status, counters) - 1) != -EINVAL)
			return 1;
		mitosis_close(m);
	}
	printf("c-abi ok\n");
	return 0;
}
"#;

/// The directory cargo put this package's libraries in (`target/<profile>`).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/c_abi-<hash>
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

#[test]
fn header_matches_rust_and_shared_library_links() {
    let dir = std::env::temp_dir().join(format!("mitosis-c-abi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("c_abi.c");
    let source = format!(
        "#include <stddef.h>\n#include \"mitosis.h\"\n{}\n{PROGRAM}",
        layout_asserts()
    );
    std::fs::write(&src, source).unwrap();
    let libs = library_dir();
    assert!(
        libs.join("libmitosis.so").exists(),
        "no libmitosis.so in {}: build it first (`cargo build -p mitosis`, as `make test-host` does)",
        libs.display()
    );
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let exe = dir.join("c_abi");
    let cc = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I", include])
        .arg(&src)
        .arg("-L")
        .arg(&libs)
        .args(["-lmitosis", "-o"])
        .arg(&exe)
        .output()
        .expect("cc");
    assert!(
        cc.status.success(),
        "the header does not match the Rust ABI:\n{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let run = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &libs)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && out.contains("c-abi ok"), "{out}");
    // Linked against the shared library, not a copy of the code.
    let ldd = Command::new("ldd").arg(&exe).output().unwrap();
    assert!(String::from_utf8_lossy(&ldd.stdout).contains("libmitosis.so"));
    let _ = std::fs::remove_dir_all(&dir);
}
