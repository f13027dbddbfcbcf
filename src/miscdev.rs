// SPDX-License-Identifier: GPL-2.0

//! Misc devices, shaped like the `kernel::miscdevice` abstraction of later kernels
//! (6.13+), so that one can replace this file: a [`MiscDevice`] trait with typed
//! `open`/`release`/`ioctl` and per-file data owned through [`ForeignOwnable`], and a
//! [`MiscDeviceRegistration`] that registers inside its pinned initializer and
//! deregisters on drop.
//!
//! All the `unsafe` of a misc device lives here: the callbacks the VFS calls, the
//! `file_operations` table and the registration.

use crate::bindings;
use core::marker::PhantomData;
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::types::{ForeignOwnable, Opaque};

/// What a misc device does with its files.
pub(crate) trait MiscDevice: Sized {
    /// The per-file data (kept in `file->private_data` from open to release).
    type Ptr: ForeignOwnable + Send + Sync;
    /// What the registration holds for every open (the driver's shared state).
    type RegistrationData: Send + Sync;

    /// A file is opened.
    fn open(data: &Self::RegistrationData) -> Result<Self::Ptr>;

    /// The file's last reference is gone.
    fn release(data: Self::Ptr) {
        drop(data);
    }

    /// `ioctl(2)` from a 64-bit caller; the value is the syscall's return value.
    fn ioctl(
        data: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        cmd: u32,
        arg: usize,
    ) -> Result<isize>;

    /// `ioctl(2)` from a 32-bit caller (`arg` already zero-extended); by default the
    /// same as [`MiscDevice::ioctl`].
    fn compat_ioctl(
        data: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        cmd: u32,
        arg: usize,
    ) -> Result<isize> {
        Self::ioctl(data, cmd, arg)
    }
}

/// How a misc device appears in `/dev`.
pub(crate) struct MiscDeviceOptions {
    pub(crate) name: &'static CStr,
    /// File mode of the device node.
    pub(crate) mode: u16,
}

/// A registered misc device.
///
/// # Invariants
///
/// `inner` is registered with the misc core (`misc_register` succeeded) and its `fops`
/// points to `fops`; both are pinned until `PinnedDrop` deregisters. `data` is
/// initialised before `inner` is registered.
#[pin_data(PinnedDrop)]
pub(crate) struct MiscDeviceRegistration<T: MiscDevice> {
    data: T::RegistrationData,
    #[pin]
    fops: Opaque<bindings::file_operations>,
    #[pin]
    inner: Opaque<bindings::miscdevice>,
    _t: PhantomData<T>,
}

// SAFETY: the C structs are only used by the misc core and the VFS under their locks.
unsafe impl<T: MiscDevice> Send for MiscDeviceRegistration<T> {}
// SAFETY: as above; `&self` gives no access to them, and `data` is `Sync`.
unsafe impl<T: MiscDevice> Sync for MiscDeviceRegistration<T> {}

impl<T: MiscDevice> MiscDeviceRegistration<T> {
    /// Registers the device; `module` owns its files (they pin it while open), and
    /// every open is given `data`.
    pub(crate) fn register(
        opts: MiscDeviceOptions,
        module: &'static ThisModule,
        data: T::RegistrationData,
    ) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            data,
            fops <- Opaque::ffi_init(move |f: *mut bindings::file_operations| {
                let mut v = bindings::file_operations::default();
                v.owner = module.as_ptr().cast();
                v.open = Some(fops_open::<T>);
                v.release = Some(fops_release::<T>);
                v.unlocked_ioctl = Some(fops_ioctl::<T>);
                v.compat_ioctl = Some(fops_compat_ioctl::<T>);
                // SAFETY: `f` is valid for writing.
                unsafe { f.write(v) };
            }),
            // SAFETY: the closure fully initialises the slot (or fails leaving nothing
            // registered), and the slot is pinned: the misc core keeps its address.
            inner <- unsafe {
                kernel::init::pin_init_from_closure(
                    move |slot: *mut Opaque<bindings::miscdevice>| {
                        let m = Opaque::raw_get(slot);
                        let mut v = bindings::miscdevice::default();
                        v.minor = 255; // MISC_DYNAMIC_MINOR
                        v.name = opts.name.as_char_ptr();
                        v.mode = opts.mode;
                        // The table is the field initialised just before this one,
                        // pinned at its final address in the same value.
                        v.fops = fops_of::<T>(m);
                        m.write(v);
                        kernel::error::to_result(bindings::misc_register(m))
                    },
                )
            },
            _t: PhantomData,
        }? Error)
    }
}

/// The registration whose `inner` field is at `inner`.
///
/// # Safety
///
/// `inner` points to the `inner` field of a `MiscDeviceRegistration<T>`.
unsafe fn registration_of<T: MiscDevice>(
    inner: *const bindings::miscdevice,
) -> *const MiscDeviceRegistration<T> {
    // SAFETY: per the contract, `inner` is inside a `MiscDeviceRegistration<T>`.
    unsafe {
        kernel::container_of!(
            inner as *const Opaque<bindings::miscdevice>,
            MiscDeviceRegistration<T>,
            inner
        )
    }
}

/// The `fops` field of the registration whose `inner` field is at `inner`.
///
/// # Safety
///
/// As for [`registration_of`].
unsafe fn fops_of<T: MiscDevice>(
    inner: *mut bindings::miscdevice,
) -> *const bindings::file_operations {
    // SAFETY: per the contract; `fops` is initialised before `inner`.
    unsafe { (*registration_of::<T>(inner)).fops.get() }
}

#[pinned_drop]
impl<T: MiscDevice> PinnedDrop for MiscDeviceRegistration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: registered (type invariant); open files keep the module, not us.
        unsafe { bindings::misc_deregister(self.inner.get()) };
    }
}

unsafe extern "C" fn fops_open<T: MiscDevice>(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> i32 {
    // SAFETY: `misc_open` sets `private_data` to our registered `miscdevice` before
    // calling us; the registration outlives its open calls (deregistration waits).
    let reg = unsafe { &*registration_of::<T>((*file).private_data as *const _) };
    match T::open(&reg.data) {
        Ok(data) => {
            // SAFETY: the file is being opened; `private_data` is ours until release.
            unsafe { (*file).private_data = data.into_foreign() as *mut _ };
            0
        }
        Err(e) => e.to_errno(),
    }
}

unsafe extern "C" fn fops_release<T: MiscDevice>(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> i32 {
    // SAFETY: set by `fops_open`; the VFS calls release once, after every ioctl ended.
    let data = unsafe { T::Ptr::from_foreign((*file).private_data) };
    T::release(data);
    0
}

unsafe extern "C" fn fops_ioctl<T: MiscDevice>(
    file: *mut bindings::file,
    cmd: u32,
    arg: usize,
) -> isize {
    // SAFETY: set by `fops_open` and live until release, which cannot run meanwhile.
    let data = unsafe { T::Ptr::borrow((*file).private_data) };
    T::ioctl(data, cmd, arg).unwrap_or_else(|e| e.to_errno() as isize)
}

unsafe extern "C" fn fops_compat_ioctl<T: MiscDevice>(
    file: *mut bindings::file,
    cmd: u32,
    arg: usize,
) -> isize {
    // SAFETY: as in `fops_ioctl`.
    let data = unsafe { T::Ptr::borrow((*file).private_data) };
    T::compat_ioctl(data, cmd, arg).unwrap_or_else(|e| e.to_errno() as isize)
}
