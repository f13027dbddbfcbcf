//! Scenario 5: malformed ioctls get distinct errnos and one log line each.

use crate::report::Report;
use mitosis::Mitosis;
use mitosis_abi::ioctl::{self as abi, Header, Pod};
use std::process::Command;

fn rejected_lines() -> usize {
    Command::new("dmesg")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .matches("mitosis: ioctl rejected")
                .count()
        })
        .unwrap_or(0)
}

/// Issues `cmd` on a buffer of `len` bytes starting with `bytes`; returns the errno or 0.
fn raw(m: &Mitosis, cmd: u32, bytes: &[u8], len: usize) -> i32 {
    let mut buf = vec![0u8; len.max(bytes.len())];
    buf[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `buf` holds `len` bytes, the size `cmd` says the module may access.
    let r = unsafe { m.raw_ioctl(cmd, buf.as_mut_ptr().cast()) };
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

fn with_header<T: Pod>(mut v: T, version: u32, size: u32) -> Vec<u8> {
    // SAFETY: every ABI struct starts with a `Header` (repr(C)).
    unsafe {
        *(&mut v as *mut T as *mut Header) = Header {
            abi_version: version,
            size,
        }
    };
    v.as_bytes().to_vec()
}

pub fn run(r: &mut Report) {
    let m = match Mitosis::open() {
        Ok(m) => m,
        Err(e) => {
            r.check("s5-open-device", false, e.to_string(), &[]);
            return;
        }
    };
    let before = rejected_lines();
    let status_len = std::mem::size_of::<abi::StatusArgs>();
    let good = with_header(
        abi::StatusArgs::default(),
        abi::ABI_VERSION,
        status_len as u32,
    );
    let mut cases: Vec<(&str, i32, i32)> = Vec::new();

    cases.push((
        "s5-good-status",
        raw(&m, abi::IOC_STATUS, &good, status_len),
        0,
    ));
    cases.push((
        "s5-unknown-number",
        raw(&m, abi::iowr(0x7f, 64), &good, 64),
        libc::ENOTTY,
    ));
    let wrong_type = (abi::IOC_STATUS & !0xff00) | (0x42 << 8);
    cases.push((
        "s5-wrong-type",
        raw(&m, wrong_type, &good, status_len),
        libc::ENOTTY,
    ));
    let read_only = (abi::IOC_STATUS & !(3 << 30)) | (2 << 30);
    cases.push((
        "s5-wrong-direction",
        raw(&m, read_only, &good, status_len),
        libc::ENOTTY,
    ));
    let short = with_header(abi::StatusArgs::default(), abi::ABI_VERSION, 16);
    cases.push((
        "s5-short-struct",
        raw(&m, abi::iowr(1, 16), &short[..16], 16),
        libc::EMSGSIZE,
    ));
    let big = status_len + 8;
    let mut tail = with_header(abi::StatusArgs::default(), abi::ABI_VERSION, big as u32);
    tail.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    cases.push((
        "s5-oversized-nonzero-tail",
        raw(&m, abi::iowr(1, big), &tail, big),
        libc::E2BIG,
    ));
    let mut zero_tail = with_header(abi::StatusArgs::default(), abi::ABI_VERSION, big as u32);
    zero_tail.extend_from_slice(&[0; 8]);
    cases.push((
        "s5-oversized-zero-tail-accepted",
        raw(&m, abi::iowr(1, big), &zero_tail, big),
        0,
    ));
    let huge = 8192;
    let mut h = with_header(abi::StatusArgs::default(), abi::ABI_VERSION, huge as u32);
    h.resize(huge, 0);
    cases.push((
        "s5-over-max-size",
        raw(&m, abi::iowr(1, huge), &h, huge),
        libc::E2BIG,
    ));
    // SAFETY: the module must refuse the unmapped address without touching it.
    let bad_ptr = unsafe { m.raw_ioctl(abi::IOC_STATUS, 0x10 as *mut libc::c_void) };
    let e = if bad_ptr < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    };
    cases.push(("s5-bad-user-pointer", e, libc::EFAULT));
    let bad_version = with_header(abi::StatusArgs::default(), 99, status_len as u32);
    cases.push((
        "s5-bad-version",
        raw(&m, abi::IOC_STATUS, &bad_version, status_len),
        libc::EPROTO,
    ));
    let bad_size = with_header(abi::StatusArgs::default(), abi::ABI_VERSION, 24);
    cases.push((
        "s5-header-size-mismatch",
        raw(&m, abi::IOC_STATUS, &bad_size, status_len),
        libc::EBADMSG,
    ));
    let vlen = std::mem::size_of::<abi::VersionArgs>();
    let ping = with_header(abi::VersionArgs::default(), 99, vlen as u32);
    cases.push((
        "s5-version-ping-any-version",
        raw(&m, abi::IOC_VERSION, &ping, vlen),
        0,
    ));
    let olen = std::mem::size_of::<abi::RemoteOpenArgs>();
    let pad = with_header(
        abi::RemoteOpenArgs {
            _pad: 1,
            peer_addr: 1,
            ..Default::default()
        },
        abi::ABI_VERSION,
        olen as u32,
    );
    cases.push((
        "s5-nonzero-padding",
        raw(&m, abi::IOC_REMOTE_OPEN, &pad, olen),
        libc::EINVAL,
    ));
    let clen = std::mem::size_of::<abi::RegionCreateArgs>();
    let odd = with_header(
        abi::RegionCreateArgs {
            size: 4097,
            ..Default::default()
        },
        abi::ABI_VERSION,
        clen as u32,
    );
    cases.push((
        "s5-region-size-invalid",
        raw(&m, abi::IOC_REGION_CREATE, &odd, clen),
        libc::EINVAL,
    ));
    let rlen = std::mem::size_of::<abi::RemoteReadArgs>();
    let nohandle = with_header(
        abi::RemoteReadArgs {
            handle: 12345,
            length: 4096,
            batch_pages: 1,
            ..Default::default()
        },
        abi::ABI_VERSION,
        rlen as u32,
    );
    cases.push((
        "s5-unknown-handle",
        raw(&m, abi::IOC_REMOTE_READ, &nohandle, rlen),
        libc::ENOENT,
    ));
    let batch0 = with_header(
        abi::RemoteReadArgs {
            handle: 1,
            length: 4096,
            ..Default::default()
        },
        abi::ABI_VERSION,
        rlen as u32,
    );
    cases.push((
        "s5-batch-zero",
        raw(&m, abi::IOC_REMOTE_READ, &batch0, rlen),
        libc::EINVAL,
    ));
    let dlen = std::mem::size_of::<abi::RegionDestroyArgs>();
    let nope = with_header(
        abi::RegionDestroyArgs {
            region_id: 424242,
            ..Default::default()
        },
        abi::ABI_VERSION,
        dlen as u32,
    );
    cases.push((
        "s5-destroy-unknown-region",
        raw(&m, abi::IOC_REGION_DESTROY, &nope, dlen),
        libc::ENOENT,
    ));

    let mut expected_logs = 0;
    for (name, got, want) in &cases {
        r.check(name, got == want, format!("errno {got}, want {want}"), &[]);
        // Every validation failure logs one line; ENOENT is a lookup result, not a
        // malformed call, and logs nothing.
        if *want != 0 && *want != libc::ENOENT {
            expected_logs += 1;
        }
    }
    let logged = rejected_lines() - before;
    r.check(
        "s5-one-log-line-each",
        logged == expected_logs,
        format!("{logged} lines for {expected_logs} rejected calls"),
        &[],
    );
}
