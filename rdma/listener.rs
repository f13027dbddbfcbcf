// SPDX-License-Identifier: GPL-2.0

//! The `rdma_cm` listener: one per host, on every device, accepting peers.

use super::cm;
use super::connection::{Connection, Owner};
use super::CALLER;
use crate::bindings;
use core::ptr::{self, NonNull};
use kernel::prelude::*;
use kernel::sync::Arc;

/// The listening id's context: the owner that admits and keeps accepted connections.
struct Context {
    owner: Arc<dyn Owner>,
}

/// A listening CM id.
///
/// # Invariants
///
/// `id` is a live CM id listening on the wildcard address, destroyed only in `Drop`;
/// its context is `context`, a leaked `KBox<Context>` reclaimed in `Drop` after the id
/// (and so every handler that could read it) is gone.
pub(crate) struct Listener {
    id: NonNull<bindings::rdma_cm_id>,
    context: NonNull<Context>,
}

// SAFETY: the id may be destroyed from any thread; the context is only read by the
// CM's handlers and freed in `Drop`.
unsafe impl Send for Listener {}
// SAFETY: no shared mutable access.
unsafe impl Sync for Listener {}

impl Listener {
    /// Listens on `0.0.0.0:port` (every RDMA device, present and future); `owner`
    /// admits and keeps the accepted connections.
    pub(crate) fn new(port: u16, owner: Arc<dyn Owner>) -> Result<Self> {
        let context = NonNull::from(KBox::leak(KBox::new(Context { owner }, GFP_KERNEL)?));
        // SAFETY: `init_net` lives forever; the context lives until the id is destroyed.
        let id = kernel::error::from_err_ptr(unsafe {
            bindings::__rdma_create_kernel_id(
                ptr::addr_of_mut!(bindings::init_net),
                Some(listener_event_handler),
                context.as_ptr().cast(),
                bindings::rdma_ucm_port_space_RDMA_PS_TCP,
                bindings::ib_qp_type_IB_QPT_RC,
                CALLER.as_char_ptr(),
            )
        });
        let id = match id.and_then(|id| NonNull::new(id).ok_or(ENOMEM)) {
            Ok(id) => id,
            Err(e) => {
                // SAFETY: leaked just above and never shared: no id holds it.
                drop(unsafe { KBox::from_raw(context.as_ptr()) });
                return Err(e);
            }
        };
        let listener = Listener { id, context };
        let mut sa = cm::sockaddr_in(0, port);
        // SAFETY: `id` is live; `sa` is a valid wildcard `sockaddr_in`.
        kernel::error::to_result(unsafe {
            bindings::rdma_bind_addr(id.as_ptr(), &mut sa as *mut _ as *mut bindings::sockaddr)
        })?;
        // SAFETY: `id` is bound.
        kernel::error::to_result(unsafe { bindings::rdma_listen(id.as_ptr(), 64) })?;
        Ok(listener)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // SAFETY: `id` is live; destroying it waits for running handlers and stops new
        // connection requests.
        unsafe { bindings::rdma_destroy_id(self.id.as_ptr()) };
        // SAFETY: leaked in `new`; the id that used it is gone (type invariant).
        drop(unsafe { KBox::from_raw(self.context.as_ptr()) });
    }
}

/// The listener's CM handler: CONNECT_REQUEST events, on the new connection's id,
/// which inherits the listener's handler and context until [`Connection::accept`]
/// gives it its own. A non-zero return makes the CM destroy the new id.
unsafe extern "C" fn listener_event_handler(
    id: *mut bindings::rdma_cm_id,
    event: *mut bindings::rdma_cm_event,
) -> i32 {
    // SAFETY: the CM passes a valid event.
    let event = unsafe { &*event };
    if event.event != bindings::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_REQUEST {
        // A wildcard listening id gets nothing else that needs an answer, and an
        // accepted id has the connection handler from its CONNECT_REQUEST on.
        return 0;
    }
    // SAFETY: `id` is live in its handler; its context is the listener's (inherited),
    // which outlives every handler of the listener (type invariant of `Listener`).
    let ctx = unsafe { (*id).context } as *const Context;
    if ctx.is_null() {
        return -1;
    }
    // SAFETY: as above.
    let owner = unsafe { &(*ctx).owner };
    match on_connect_request(owner, id, event) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// CONNECT_REQUEST on the listener: admit the peer, then accept the new id as a
/// server connection the owner keeps.
fn on_connect_request(
    owner: &Arc<dyn Owner>,
    id: *mut bindings::rdma_cm_id,
    event: &bindings::rdma_cm_event,
) -> Result {
    // SAFETY: the CM passes the new, live id with its route.
    let (peer, _) = unsafe { cm::peer_of(id) };
    owner.admit(peer)?;
    let conn = Connection::accept(id, event, owner.clone())?;
    if let Err(e) = owner.accepted(conn.clone()) {
        conn.fail(e);
    }
    Ok(())
}
