//! The C header and the Rust structs must agree; the C ABI must refuse bad arguments.

use mitosis::capi;
use mitosis_abi::ioctl::StatusArgs;

#[test]
fn header_struct_sizes_match_rust() {
    let header = include_str!("../include/mitosis.h");
    assert!(header.contains("(456 bytes)"));
    assert_eq!(std::mem::size_of::<StatusArgs>(), 456);
    assert!(header.contains(&format!(
        "#define MITOSIS_MAX_DEVICES {}",
        mitosis_abi::ioctl::MAX_DEVICES
    )));
}

#[test]
fn null_arguments_are_einval() {
    // SAFETY: NULL is explicitly allowed and rejected by every entry point.
    unsafe {
        assert_eq!(capi::mitosis_open(std::ptr::null_mut()), -libc::EINVAL);
        assert_eq!(
            capi::mitosis_version(std::ptr::null(), std::ptr::null_mut()),
            -libc::EINVAL
        );
        assert_eq!(
            capi::mitosis_status(std::ptr::null(), std::ptr::null_mut(), 456),
            -libc::EINVAL
        );
        capi::mitosis_close(std::ptr::null_mut());
    }
}

#[test]
fn open_without_module_reports_errno() {
    if std::path::Path::new(mitosis::DEVICE_PATH).exists() {
        return; // a host with the module loaded: nothing to check here
    }
    let mut m = std::ptr::null_mut();
    // SAFETY: `m` is a valid out pointer.
    let r = unsafe { capi::mitosis_open(&mut m) };
    assert_eq!(r, -libc::ENOENT);
    assert!(m.is_null());
}
