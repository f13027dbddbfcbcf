// SPDX-License-Identifier: GPL-2.0

//! The `rdma_cm` listener: one per host, on every device, accepting peers.

use super::connection::{ClosedHandler, Connection, RequestHandler};
use super::CALLER;
use crate::bindings;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;
use kernel::sync::Arc;

/// What the listener does with an accepted connection.
pub(crate) struct AcceptHooks {
    pub(crate) on_request: RequestHandler,
    pub(crate) on_closed: ClosedHandler,
    /// Decides, before anything is allocated or answered, whether a connection
    /// request from this (network-order IPv4) address is taken; an error rejects it.
    pub(crate) admit: fn(u32) -> Result,
    /// Keeps the connection (the listener does not own it).
    pub(crate) on_accepted: fn(Arc<Connection>) -> Result,
}

static HOOKS: AtomicPtr<AcceptHooks> = AtomicPtr::new(ptr::null_mut());

/// A listening CM id.
///
/// # Invariants
///
/// `id` is a live CM id listening on the wildcard address with a NULL context, destroyed
/// only in `Drop`; `HOOKS` points to `'static` hooks while it lives.
pub(crate) struct Listener {
    id: NonNull<bindings::rdma_cm_id>,
    port: u16,
}

// SAFETY: the id may be destroyed from any thread.
unsafe impl Send for Listener {}
// SAFETY: no shared mutable access.
unsafe impl Sync for Listener {}

impl Listener {
    /// Listens on `0.0.0.0:port` (every RDMA device, present and future).
    pub(crate) fn new(port: u16, hooks: &'static AcceptHooks) -> Result<Self> {
        HOOKS.store(hooks as *const _ as *mut _, Ordering::Release);
        // SAFETY: `init_net` lives forever; the handler ignores events on a NULL context.
        let id = kernel::error::from_err_ptr(unsafe {
            bindings::__rdma_create_kernel_id(
                ptr::addr_of_mut!(bindings::init_net),
                Some(super::cm::cm_event_handler),
                ptr::null_mut(),
                bindings::rdma_ucm_port_space_RDMA_PS_TCP,
                bindings::ib_qp_type_IB_QPT_RC,
                CALLER.as_char_ptr(),
            )
        })?;
        let id = NonNull::new(id).ok_or(ENOMEM)?;
        let listener = Listener { id, port };
        let mut sa = bindings::sockaddr_in::default();
        sa.sin_family = bindings::AF_INET as u16;
        sa.sin_port = port.to_be();
        // SAFETY: `id` is live; `sa` is a valid wildcard `sockaddr_in`.
        kernel::error::to_result(unsafe {
            bindings::rdma_bind_addr(id.as_ptr(), &mut sa as *mut _ as *mut bindings::sockaddr)
        })?;
        // SAFETY: `id` is bound.
        kernel::error::to_result(unsafe { bindings::rdma_listen(id.as_ptr(), 64) })?;
        Ok(listener)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: `id` is live; destroying it waits for running handlers and stops new
        // connection requests.
        unsafe { bindings::rdma_destroy_id(self.id.as_ptr()) };
    }
}

/// CONNECT_REQUEST on the listener: accept the new id as a server connection.
pub(crate) fn on_connect_request(
    id: *mut bindings::rdma_cm_id,
    event: &bindings::rdma_cm_event,
) -> Result {
    let hooks = HOOKS.load(Ordering::Acquire);
    if hooks.is_null() {
        return Err(crate::errno::econnrefused());
    }
    // SAFETY: `HOOKS` points to `'static` hooks (type invariant of `Listener`).
    let hooks = unsafe { &*hooks };
    // SAFETY: the CM passes the new, live id with its route.
    let (peer, _) = unsafe { super::cm::peer_of(id) };
    (hooks.admit)(peer)?;
    let conn = Connection::accept(id, event, hooks.on_request, hooks.on_closed)?;
    if let Err(e) = (hooks.on_accepted)(conn.clone()) {
        conn.fail(e);
    }
    Ok(())
}
