// SPDX-License-Identifier: GPL-2.0

//! RDMA device discovery with an `ib_client`.
//!
//! The client records each device as it appears (for status) and, on removal, calls the
//! owner's hook so every connection on that device is torn down before the device goes:
//! `rdma link delete` with the module loaded stays clean.

use crate::abi::ioctl::{DeviceInfo, MAX_DEVICES};
use crate::bindings;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Mutex};
use kernel::types::Opaque;

/// Called when a device is going away; must release everything on it before returning.
pub(crate) type RemoveHook = fn(*mut bindings::ib_device);

/// The registered client and the devices it has seen.
///
/// # Invariants
///
/// While registered, `client` is pinned and `CLIENT` points to `self`.
#[pin_data(PinnedDrop)]
pub(crate) struct DeviceClient {
    #[pin]
    client: Opaque<bindings::ib_client>,
    #[pin]
    devices: Mutex<KVec<*mut bindings::ib_device>>,
    on_remove: RemoveHook,
    registered: core::sync::atomic::AtomicBool,
}

// SAFETY: device pointers are only used while the core holds the devices registered.
unsafe impl Send for DeviceClient {}
// SAFETY: the device list is under a mutex.
unsafe impl Sync for DeviceClient {}

static CLIENT: AtomicPtr<DeviceClient> = AtomicPtr::new(ptr::null_mut());
/// Only this device name may be used (module parameter), empty for any.
fn wanted_name() -> &'static [u8] {
    // SAFETY: the parameter is a NUL-terminated string set at load time (read-only, 0444).
    let p = unsafe { bindings::mitosis_param_device };
    if p.is_null() {
        return b"";
    }
    // SAFETY: as above.
    unsafe { kernel::str::CStr::from_char_ptr(p) }.as_bytes()
}

fn name_of(dev: *mut bindings::ib_device) -> &'static [u8] {
    // SAFETY: `dev` is registered; its name is a NUL-terminated array that lives with it
    // (callers do not keep the slice past the device's life).
    let name = unsafe { &(*dev).name };
    let bytes = unsafe { core::slice::from_raw_parts(name.as_ptr() as *const u8, name.len()) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Whether connections may use `dev` (the `device` module parameter).
pub(crate) fn allowed(dev: *mut bindings::ib_device) -> bool {
    let want = wanted_name();
    want.is_empty() || want == name_of(dev)
}

impl DeviceClient {
    pub(crate) fn new(on_remove: RemoveHook) -> impl PinInit<Self> {
        pin_init!(DeviceClient {
            client <- Opaque::ffi_init(|c: *mut bindings::ib_client| {
                let mut v = bindings::ib_client::default();
                v.name = kernel::c_str!("mitosis").as_char_ptr();
                v.add = Some(Self::add);
                v.remove = Some(Self::remove);
                // SAFETY: `c` is valid for writing.
                unsafe { c.write(v) };
            }),
            devices <- new_mutex!(KVec::new()),
            on_remove,
            registered: core::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Registers the client: `add` runs for every present device before this returns.
    pub(crate) fn register(self: Pin<&mut Self>) -> Result {
        // SAFETY: we do not move out of the pinned value.
        let this = unsafe { self.get_unchecked_mut() };
        CLIENT.store(this as *mut Self, Ordering::Release);
        // SAFETY: `client` is initialised and pinned; it stays registered until Drop.
        let r =
            kernel::error::to_result(unsafe { bindings::ib_register_client(this.client.get()) });
        if r.is_err() {
            CLIENT.store(ptr::null_mut(), Ordering::Release);
        } else {
            this.registered.store(true, Ordering::Release);
        }
        r
    }

    fn get() -> Option<&'static DeviceClient> {
        let p = CLIENT.load(Ordering::Acquire);
        // SAFETY: set while registered (type invariant); callbacks only run then.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    unsafe extern "C" fn add(dev: *mut bindings::ib_device) -> i32 {
        let Some(this) = Self::get() else {
            return -(bindings::ENODEV as i32);
        };
        if this.devices.lock().push(dev, GFP_KERNEL).is_err() {
            return -(bindings::ENOMEM as i32);
        }
        pr_info!(
            "device {} added\n",
            kernel::str::BStr::from_bytes(name_of(dev))
        );
        0
    }

    unsafe extern "C" fn remove(dev: *mut bindings::ib_device, _data: *mut core::ffi::c_void) {
        let Some(this) = Self::get() else { return };
        pr_info!(
            "device {} removed: closing its connections\n",
            kernel::str::BStr::from_bytes(name_of(dev))
        );
        (this.on_remove)(dev);
        crate::util::remove_first(&mut this.devices.lock(), |&d| d == dev);
    }

    /// Status of every device seen (at most `MAX_DEVICES`).
    pub(crate) fn infos(&self, out: &mut [DeviceInfo; MAX_DEVICES]) -> u32 {
        let devs = self.devices.lock();
        let mut n = 0;
        for (&dev, info) in devs.iter().zip(out.iter_mut()) {
            let name = name_of(dev);
            let len = name.len().min(info.name.len() - 1);
            info.name[..len].copy_from_slice(&name[..len]);
            let mut attr = bindings::ib_port_attr::default();
            // SAFETY: `dev` is registered while in the list (removed under the lock
            // before the core frees it).
            if unsafe { bindings::ib_query_port(dev, 1, &mut attr) } == 0 {
                info.port_state = attr.state;
            }
            // SAFETY: as above.
            let attrs = unsafe { &(*dev).attrs };
            info.max_fast_reg_page_list_len = attrs.max_fast_reg_page_list_len;
            info.max_qp_rd_atom = attrs.max_qp_rd_atom as u32;
            n += 1;
        }
        n
    }
}

impl DeviceClient {
    /// Unregisters the client (idempotent): `remove` runs for every device first.
    pub(crate) fn unregister(&self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            // SAFETY: registered in `register`.
            unsafe { bindings::ib_unregister_client(self.client.get()) };
            CLIENT.store(ptr::null_mut(), Ordering::Release);
        }
    }
}

#[pinned_drop]
impl PinnedDrop for DeviceClient {
    fn drop(self: Pin<&mut Self>) {
        self.unregister();
    }
}
