// SPDX-License-Identifier: GPL-2.0

//! A connection's life on the RDMA CM: connect (address, route, resources, connect,
//! ESTABLISHED), accept, and one small step per CM event; resources are built once,
//! in the handler, serialised with teardown.

use super::connection::*;
use super::device::IbDevice;
use super::verbs::{Cq, CqPoll, DmaPage};
use super::CALLER;
use crate::abi::wire;
use crate::bindings;
use crate::counters::{count, COUNTERS};
use crate::errno;
use core::ptr;
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

impl Connection {
    /// Connects to `addr:port` (IPv4, network-order address), waiting at most
    /// `timeout_ms` for the whole setup.
    pub(crate) fn connect(
        addr: u32,
        port: u16,
        timeout_ms: u32,
        owner: Arc<dyn Owner>,
    ) -> Result<Arc<Self>> {
        let conn = Arc::pin_init(
            Self::new(Role::Client, addr, port, timeout_ms, owner),
            GFP_KERNEL,
        )?;
        // SAFETY: `init_net` is the initial network namespace, alive forever; the handler
        // and context stay valid until the id is destroyed in `teardown`.
        let id = kernel::error::from_err_ptr(unsafe {
            bindings::__rdma_create_kernel_id(
                ptr::addr_of_mut!(bindings::init_net),
                Some(cm_event_handler),
                &*conn as *const Self as *mut _,
                bindings::rdma_ucm_port_space_RDMA_PS_TCP,
                bindings::ib_qp_type_IB_QPT_RC,
                CALLER.as_char_ptr(),
            )
        })?;
        conn.id.store(id, Ordering::Release);
        conn.connected.arm();
        let dst = sockaddr_in(addr, port);
        // SAFETY: `id` is live; `dst` is a valid `sockaddr_in` for the call.
        let r = unsafe {
            bindings::rdma_resolve_addr(
                id,
                ptr::null_mut(),
                &dst as *const _ as *const bindings::sockaddr,
                timeout_ms as _,
            )
        };
        let outcome = if r != 0 {
            Err(Error::from_errno(r))
        } else {
            match conn.connected.wait_killable(timeout_ms) {
                Err(e) => Err(e),
                Ok(_) => match conn.status.load(Ordering::Acquire) {
                    0 => Ok(()),
                    e => Err(Error::from_errno(e)),
                },
            }
        };
        match outcome {
            Ok(()) => {
                count(&COUNTERS.conns_established, 1);
                Ok(conn)
            }
            Err(e) => {
                count(&COUNTERS.conns_failed, 1);
                // On the module's workqueue: the caller may hold the mmap lock (a
                // fault reconnecting), and destroying a CM id waits for its handler,
                // which user-space CM users order after the mmap lock.
                conn.fail(e);
                Err(e)
            }
        }
    }

    /// Accepts a CONNECT_REQUEST on the new `id` (the listener, from the CM handler).
    /// On error the caller returns non-zero and the CM destroys `id`.
    pub(super) fn accept(
        id: *mut bindings::rdma_cm_id,
        event: &bindings::rdma_cm_event,
        owner: Arc<dyn Owner>,
    ) -> Result<Arc<Self>> {
        // SAFETY: the CM passes a live id with a resolved route.
        let (addr, port) = unsafe { peer_of(id) };
        let conn = Arc::pin_init(Self::new(Role::Server, addr, port, 0, owner), GFP_KERNEL)?;
        let result = (|| {
            // SAFETY: we are in the CM handler of `id`, setting it up.
            unsafe { conn.create_resources(id)? };
            // SAFETY: `id` is live and we are in its handler (events are serialised):
            // from now on its events go to the connection handler with the connection
            // as context, valid until `teardown` destroys the id. It inherited the
            // listener's handler and context.
            unsafe {
                (*id).event_handler = Some(cm_event_handler);
                (*id).context = &*conn as *const Self as *mut _;
            }
            // SAFETY: for CONNECT_REQUEST the union holds connection parameters.
            let theirs = unsafe { event.param.conn };
            // SAFETY: `id` has a device.
            let attrs = unsafe { &(*(*id).device).attrs };
            let mut param = bindings::rdma_conn_param::default();
            param.responder_resources = (theirs.initiator_depth as u32)
                .min(attrs.max_qp_rd_atom as u32)
                .min(RD_ATOM) as u8;
            param.initiator_depth = (theirs.responder_resources as u32)
                .min(attrs.max_qp_init_rd_atom as u32)
                .min(RD_ATOM) as u8;
            param.retry_count = 7;
            param.rnr_retry_count = 7;
            let mut challenge = [0u8; 16];
            crate::util::random_bytes(&mut challenge);
            *conn.challenge.lock() = Some(challenge);
            let data = wire::encode_accept_data(&challenge);
            param.private_data = data.as_ptr().cast();
            param.private_data_len = data.len() as u8;
            // SAFETY: in the CM handler of `id` with a QP created on it; `data` outlives
            // the call (the CM copies it into the reply).
            kernel::error::to_result(unsafe { bindings::rdma_accept(id, &mut param) })
        })();
        match result {
            Ok(()) => {
                conn.id.store(id, Ordering::Release);
                Ok(conn)
            }
            Err(e) => {
                // The CM destroys `id` itself when we return an error: tear down only ours.
                // SAFETY: `id` is live; clear our context before it goes.
                unsafe { (*id).context = ptr::null_mut() };
                conn.teardown();
                Err(e)
            }
        }
    }

    /// Creates CQs, the QP (in the device's shared PD) and receive buffers on `id`'s device
    /// and posts the receives.
    ///
    /// # Safety
    ///
    /// Called once, from the CM handler of `id` while `state == CONNECTING`.
    pub(super) unsafe fn create_resources(&self, id: *mut bindings::rdma_cm_id) -> Result {
        // SAFETY: address (and route) resolution bound `id` to a device.
        let dev = unsafe { (*id).device };
        if dev.is_null() {
            return Err(ENODEV);
        }
        // SAFETY: the id holds its device registered (a removal reaches our client,
        // which tears this connection down, before the device goes).
        let dev = unsafe { IbDevice::from_raw(dev) };
        if !self.owner.device_allowed(dev.name()) {
            return Err(ENODEV);
        }
        let domain = self.owner.devices().domain(dev.as_ptr()).ok_or(ENODEV)?;
        // Every send-side completion (READs, SENDs, registrations) wakes a `Waiter`,
        // which may run in softirq context; receive handlers serve requests and sleep.
        let send_cq = Cq::new(dev, SEND_DEPTH as i32 + 1, CqPoll::Softirq)?;
        let recv_cq = Cq::new(dev, RECV_DEPTH as i32 + 1, CqPoll::Workqueue)?;
        let send_buf = DmaPage::new(dev, bindings::dma_data_direction_DMA_TO_DEVICE)?;
        let mut recv_bufs = KVec::with_capacity(RECV_DEPTH, GFP_KERNEL)?;
        for index in 0..RECV_DEPTH {
            let page = DmaPage::new(dev, bindings::dma_data_direction_DMA_FROM_DEVICE)?;
            let buf = KBox::pin_init(
                pin_init!(RecvBuf {
                    cqe <- Opaque::ffi_init(|p: *mut bindings::ib_cqe| {
                        // SAFETY: `p` is valid for writing.
                        unsafe { p.write(bindings::ib_cqe { done: Some(Self::recv_done) }) }
                    }),
                    page,
                    conn: self as *const Self,
                    index,
                }),
                GFP_KERNEL,
            )?;
            recv_bufs.push(buf, GFP_KERNEL)?;
        }
        let mut attr = bindings::ib_qp_init_attr::default();
        attr.send_cq = send_cq.as_ptr();
        attr.recv_cq = recv_cq.as_ptr();
        attr.cap.max_send_wr = SEND_DEPTH;
        attr.cap.max_recv_wr = RECV_DEPTH as u32;
        // A READ of contiguous remote pages scatters into several local pages.
        let read_sges = crate::params::MAX_READ_PAGES_PER_WR
            .min(dev.attrs().max_send_sge as u32)
            .min(dev.attrs().max_sge_rd as u32)
            .max(1);
        attr.cap.max_send_sge = read_sges;
        attr.cap.max_recv_sge = 1;
        attr.sq_sig_type = bindings::ib_sig_type_IB_SIGNAL_REQ_WR;
        attr.qp_type = bindings::ib_qp_type_IB_QPT_RC;
        // SAFETY: `id` is bound to `dev`; the PD and the CQs belong to `dev`.
        kernel::error::to_result(unsafe {
            bindings::rdma_create_qp(id, domain.pd().as_ptr(), &mut attr)
        })?;
        let res = Resources {
            id,
            recv_bufs,
            send_buf,
            _send_cq: send_cq,
            _recv_cq: recv_cq,
            domain,
            read_sges: attr.cap.max_send_sge.clamp(1, read_sges),
        };
        for buf in res.recv_bufs.iter() {
            Self::post_recv(&res, buf)?;
        }
        self.device.store(dev.as_ptr(), Ordering::Release);
        // SAFETY: caller guarantees we are the only writer (CONNECTING, in the handler).
        unsafe { *self.res.get() = Some(res) };
        Ok(())
    }

    /// Handles a CM event for this connection (CM handler context: must not sleep long
    /// or destroy the id).
    pub(super) fn on_cm_event(
        &self,
        id: *mut bindings::rdma_cm_id,
        event: &bindings::rdma_cm_event,
    ) {
        let connecting = self.state.load(Ordering::Acquire) == CONNECTING;
        // `status`: 0 or a negative errno. A client's `connect` waits for the outcome
        // and tears down on failure; an accepted connection has no waiter, so a failed
        // handshake (the peer rejected, went unreachable, or never sent RTU) is torn
        // down here, or it would hold its slot and resources for good.
        let finish = |status: i32| {
            if !connecting {
                return;
            }
            if self.role == Role::Server && status != 0 {
                self.fail(Error::from_errno(status));
                return;
            }
            self.status.store(status, Ordering::Release);
            // SAFETY: `connected` is only completed by hand.
            unsafe { bindings::complete(self.connected.completion_ptr()) };
        };
        match event.event {
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_RESOLVED => {
                // SAFETY: `id` is live (we are in its handler).
                let r = unsafe { bindings::rdma_resolve_route(id, self.setup_timeout_ms as _) };
                if r != 0 {
                    finish(r);
                }
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_ROUTE_RESOLVED => {
                let _setup = self.setup_lock.lock();
                if self.state.load(Ordering::Acquire) != CONNECTING {
                    // Torn down meanwhile (the connect timed out): build nothing.
                    return;
                }
                // SAFETY: first and only setup of this connection, in its handler,
                // serialised with teardown by `setup_lock`.
                let r = unsafe { self.create_resources(id) }.and_then(|()| {
                    // SAFETY: `id` has a device.
                    let attrs = unsafe { &(*(*id).device).attrs };
                    let mut param = bindings::rdma_conn_param::default();
                    param.responder_resources = (attrs.max_qp_rd_atom as u32).min(RD_ATOM) as u8;
                    param.initiator_depth = (attrs.max_qp_init_rd_atom as u32).min(RD_ATOM) as u8;
                    param.retry_count = 7;
                    param.rnr_retry_count = 7;
                    // SAFETY: in the handler of `id`, which has a QP.
                    kernel::error::to_result(unsafe {
                        bindings::rdma_connect_locked(id, &mut param)
                    })
                });
                if let Err(e) = r {
                    finish(e.to_errno());
                }
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_ESTABLISHED => {
                if connecting && self.role == Role::Client {
                    // SAFETY: for ESTABLISHED the union holds connection parameters,
                    // whose private data (the server's accept data) lives for the call.
                    let data = unsafe {
                        let conn = event.param.conn;
                        if conn.private_data.is_null() {
                            &[][..]
                        } else {
                            core::slice::from_raw_parts(
                                conn.private_data.cast::<u8>(),
                                conn.private_data_len as usize,
                            )
                        }
                    };
                    match wire::decode_accept_data(data) {
                        Some(c) => *self.challenge.lock() = Some(c),
                        None => {
                            // Not a Mitosis server of this wire version: nothing on
                            // it could be opened.
                            peer_warn!(
                                "{} accepted without a challenge: refused\n",
                                Ipv4(self.peer_addr)
                            );
                            finish(errno::eproto().to_errno());
                            return;
                        }
                    }
                }
                if connecting {
                    self.state.store(UP, Ordering::Release);
                    if self.role == Role::Server {
                        count(&COUNTERS.conns_accepted, 1);
                    }
                    finish(0);
                }
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_ERROR
            | bindings::rdma_cm_event_type_RDMA_CM_EVENT_ROUTE_ERROR
            | bindings::rdma_cm_event_type_RDMA_CM_EVENT_UNREACHABLE => {
                finish(errno::ehostunreach().to_errno())
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_REJECTED => {
                finish(errno::econnrefused().to_errno())
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_CONNECT_ERROR => {
                finish(errno::econnreset().to_errno())
            }
            bindings::rdma_cm_event_type_RDMA_CM_EVENT_DISCONNECTED
            | bindings::rdma_cm_event_type_RDMA_CM_EVENT_DEVICE_REMOVAL
            | bindings::rdma_cm_event_type_RDMA_CM_EVENT_ADDR_CHANGE => {
                if connecting {
                    finish(errno::econnreset().to_errno());
                } else {
                    self.fail(errno::econnreset());
                }
            }
            _ => {}
        }
    }
}

/// Handler of every connection's CM id (context = the connection, or NULL after a
/// failed accept). The listener has its own (`listener.rs`).
pub(super) unsafe extern "C" fn cm_event_handler(
    id: *mut bindings::rdma_cm_id,
    event: *mut bindings::rdma_cm_event,
) -> i32 {
    // SAFETY: the CM passes a valid event.
    let event = unsafe { &*event };
    // SAFETY: `id` is live in its own handler.
    let ctx = unsafe { (*id).context };
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: a non-NULL context is a connection that outlives its id (type invariant).
    let conn = unsafe { &*(ctx as *const Connection) };
    conn.on_cm_event(id, event);
    0
}

pub(super) fn sockaddr_in(addr: u32, port: u16) -> bindings::sockaddr_in {
    let mut sa = bindings::sockaddr_in::default();
    sa.sin_family = bindings::AF_INET as u16;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = addr;
    sa
}

/// Peer address of an id with a resolved route.
///
/// # Safety
///
/// `id` must be live.
pub(crate) unsafe fn peer_of(id: *mut bindings::rdma_cm_id) -> (u32, u16) {
    // SAFETY: the destination of an IPv4 connection is a `sockaddr_in`.
    let sa =
        unsafe { &*(ptr::addr_of!((*id).route.addr.dst_addr) as *const bindings::sockaddr_in) };
    (sa.sin_addr.s_addr, u16::from_be(sa.sin_port))
}
