// SPDX-License-Identifier: GPL-2.0

//! RDMA device discovery with an `ib_client`.
//!
//! The client records each device as it appears (for status) and, on removal, calls the
//! owner's hook so every connection on that device is torn down before the device goes:
//! `rdma link delete` with the module loaded stays clean.

use super::connection::Owner;
use super::domain::Domain;
use crate::abi::ioctl::{DeviceInfo, MAX_DEVICES};
use crate::bindings;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::types::Opaque;

/// Identifies an RDMA device for comparison (which connections run on a device being
/// removed); never dereferenced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct DeviceKey(usize);

impl DeviceKey {
    pub(super) fn of(dev: *mut bindings::ib_device) -> Self {
        DeviceKey(dev as usize)
    }
}

/// The devices the client has seen, each with its protection domain.
///
/// # Invariants
///
/// Every domain in `list` is on a registered device: it is removed (under the lock)
/// by the client's `remove`, before the core frees the device.
#[pin_data]
pub(crate) struct Devices {
    #[pin]
    list: Mutex<KVec<Arc<Domain>>>,
}

// SAFETY: device pointers are only used while the core holds the devices registered.
unsafe impl Send for Devices {}
// SAFETY: the list is under a mutex.
unsafe impl Sync for Devices {}

impl Devices {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Devices {
            list <- new_mutex!(KVec::new()),
        })
    }

    /// Status of every device seen (at most `MAX_DEVICES`).
    pub(crate) fn infos(&self, out: &mut [DeviceInfo; MAX_DEVICES]) -> u32 {
        let devs = self.list.lock();
        let mut n = 0;
        for (domain, info) in devs.iter().zip(out.iter_mut()) {
            // SAFETY: the device is registered while in the list (type invariant).
            let dev = unsafe { IbDevice::from_raw(domain.device_ptr()) };
            let name = dev.name();
            let len = name.len().min(info.name.len() - 1);
            info.name[..len].copy_from_slice(&name[..len]);
            let mut attr = bindings::ib_port_attr::default();
            // SAFETY: `dev` is registered.
            if unsafe { bindings::ib_query_port(dev.as_ptr(), 1, &mut attr) } == 0 {
                info.port_state = attr.state;
            }
            let attrs = dev.attrs();
            info.max_fast_reg_page_list_len = attrs.max_fast_reg_page_list_len;
            info.max_qp_rd_atom = attrs.max_qp_rd_atom as u32;
            n += 1;
        }
        n
    }

    /// The protection domain of the registered device `dev`, if the client has it.
    pub(crate) fn domain(&self, dev: *mut bindings::ib_device) -> Option<Arc<Domain>> {
        self.list.lock().iter().find(|d| d.is_on(dev)).cloned()
    }

    /// Drops the shared registration under `key` on every device.
    pub(crate) fn forget(&self, key: u64) {
        for d in self.list.lock().iter() {
            d.forget(key);
        }
    }
}

/// The registered `ib_client`: tells its owner when a device appears or goes away.
///
/// # Invariants
///
/// `client` is registered with the RDMA core from initialisation to `PinnedDrop`, and
/// `CLIENT` points to `self` meanwhile. This is the module's one static pointer,
/// because `ib_client::add` receives no context in 6.12 (`int (*add)(struct
/// ib_device *)`, include/rdma/ib_verbs.h): the client's callbacks find their owner
/// through it, and nothing else does.
#[pin_data(PinnedDrop)]
pub(crate) struct DeviceClient {
    owner: Arc<dyn Owner>,
    #[pin]
    client: Opaque<bindings::ib_client>,
}

// SAFETY: the C struct is only used by the RDMA core under its locks.
unsafe impl Send for DeviceClient {}
// SAFETY: as above; `&self` gives access to `owner` only.
unsafe impl Sync for DeviceClient {}

static CLIENT: AtomicPtr<DeviceClient> = AtomicPtr::new(ptr::null_mut());

/// An RDMA device (`struct ib_device`), borrowed while something keeps it registered:
/// a CM id bound to it, or the client between its `add` and `remove`.
///
/// # Invariants
///
/// The wrapped device is registered with the RDMA core for as long as the reference.
#[repr(transparent)]
pub(crate) struct IbDevice(Opaque<bindings::ib_device>);

impl IbDevice {
    /// The device at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` is a registered device that stays registered for `'a`.
    pub(crate) unsafe fn from_raw<'a>(ptr: *mut bindings::ib_device) -> &'a Self {
        // SAFETY: `IbDevice` is a transparent wrapper; the caller guarantees the rest.
        unsafe { &*ptr.cast::<Self>() }
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::ib_device {
        self.0.get()
    }

    /// The device's name (up to its NUL).
    pub(crate) fn name(&self) -> &[u8] {
        // SAFETY: registered (type invariant): its name is a NUL-terminated array that
        // lives with it; `c_char` and `u8` have the same layout.
        let bytes = unsafe {
            let name = &(*self.as_ptr()).name;
            core::slice::from_raw_parts(name.as_ptr().cast::<u8>(), name.len())
        };
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        &bytes[..end]
    }

    /// The device's attributes (limits).
    pub(crate) fn attrs(&self) -> &bindings::ib_device_attr {
        // SAFETY: registered (type invariant); the attributes are set at registration.
        unsafe { &(*self.as_ptr()).attrs }
    }
}

impl DeviceClient {
    /// Registers a client that tells `owner` about devices: `add` runs for every
    /// present device before the initializer returns.
    pub(crate) fn new(owner: Arc<dyn Owner>) -> impl PinInit<Self, Error> {
        try_pin_init!(DeviceClient {
            owner,
            // SAFETY: the closure fully initialises the pinned slot and registers it;
            // on failure nothing stays registered. `owner` is initialised before (it is
            // first in this initializer), so callbacks during registration find it.
            client <- unsafe {
                kernel::init::pin_init_from_closure(
                    move |slot: *mut Opaque<bindings::ib_client>| {
                        let c = Opaque::raw_get(slot);
                        let mut v = bindings::ib_client::default();
                        v.name = kernel::c_str!("mitosis").as_char_ptr();
                        v.add = Some(Self::add);
                        v.remove = Some(Self::remove);
                        c.write(v);
                        let this = kernel::container_of!(slot, DeviceClient, client);
                        CLIENT.store(this as *mut Self, Ordering::Release);
                        let r = kernel::error::to_result(bindings::ib_register_client(c));
                        if r.is_err() {
                            CLIENT.store(ptr::null_mut(), Ordering::Release);
                        }
                        r
                    },
                )
            },
        }? Error)
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
        // SAFETY: the core calls `add` with a registered device.
        let domain = match Domain::new(unsafe { IbDevice::from_raw(dev) }) {
            Ok(d) => d,
            Err(e) => return e.to_errno(),
        };
        if this
            .owner
            .devices()
            .list
            .lock()
            .push(domain, GFP_KERNEL)
            .is_err()
        {
            return -(bindings::ENOMEM as i32);
        }
        pr_info!(
            "device {} added\n",
            // SAFETY: the core calls `add`/`remove` with a registered device.
            kernel::str::BStr::from_bytes(unsafe { IbDevice::from_raw(dev) }.name())
        );
        0
    }

    unsafe extern "C" fn remove(dev: *mut bindings::ib_device, _data: *mut core::ffi::c_void) {
        let Some(this) = Self::get() else { return };
        pr_info!(
            "device {} removed: closing its connections\n",
            // SAFETY: the core calls `add`/`remove` with a registered device.
            kernel::str::BStr::from_bytes(unsafe { IbDevice::from_raw(dev) }.name())
        );
        this.owner.device_removed(DeviceKey::of(dev));
        // Every connection on it is down: the domain's registrations and PD go now,
        // while the device is still registered.
        let domain =
            crate::util::remove_first(&mut this.owner.devices().list.lock(), |d| d.is_on(dev));
        drop(domain);
    }
}

#[pinned_drop]
impl PinnedDrop for DeviceClient {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: registered (type invariant); `remove` runs for every device first.
        unsafe { bindings::ib_unregister_client(self.client.get()) };
        CLIENT.store(ptr::null_mut(), Ordering::Release);
    }
}
