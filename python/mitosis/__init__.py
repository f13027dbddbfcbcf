"""Remote fork for Python: a warmed-up interpreter becomes a snapshot that children on
other hosts resume from, pulling the pages they touch with one-sided RDMA READs.

    import mitosis
    handle = mitosis.fork_prepare()     # str here, None in every child
    if handle is None:
        serve_one_request()             # a child, possibly on another host
    else:
        publish(handle)                 # give it to the platform's launcher

A thin ctypes layer over the C ABI of libmitosis.so (see docs/python.md for why
ctypes rather than an extension module). Failures raise OSError subclasses chosen
from the errno (ConnectionRefusedError, PermissionError, TimeoutError, ...) whose
message says which operation failed and the likely cause.
"""

import ctypes
import errno as _errno
import gc
import os
import sys
import threading

__all__ = [
    "fork_prepare",
    "fork_resume",
    "release",
    "status",
    "version",
    "is_child",
    "resume_report",
    "close",
    "ThreadsAliveError",
    "COUNTERS",
    "HANDLE_MAX",
]

#: Longest handle text with its NUL (MITOSIS_HANDLE_MAX).
HANDLE_MAX = 128
_RESUME_EAGER = 1
_RELEASE_FORCE = 1
_MAX_DEVICES = 4

#: The module's counters, in ABI order (checked against the Rust definition by the
#: host tests, lib/tests/python_abi.rs).
COUNTERS = (
    "conns_established", "conns_failed", "conns_accepted", "conns_closed",
    "ctrl_msgs_sent", "ctrl_msgs_received",
    "read_wrs_posted", "read_doorbells", "bytes_read", "read_errors", "read_timeouts",
    "regions_live", "region_opens", "region_opens_refused", "mrs_live",
    "snapshots_live", "snapshot_pages", "resumes", "resumes_failed",
    "pages_fetched", "pages_zeroed", "fetch_failures",
    "remote_faults", "vmas_local", "files_refused", "ws_recorded", "ws_pages_replayed",
    "ws_reports_kept", "huge_pages_captured", "readahead_windows",
)


class _Header(ctypes.Structure):
    _fields_ = [("abi_version", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _DeviceInfo(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char * 32),
        ("port_state", ctypes.c_uint32),
        ("max_fast_reg_page_list_len", ctypes.c_uint32),
        ("max_qp_rd_atom", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _Counters(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in COUNTERS]


class _Status(ctypes.Structure):
    _fields_ = [
        ("hdr", _Header),
        ("n_devices", ctypes.c_uint32),
        ("n_connections", ctypes.c_uint32),
        ("listen_port", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("devices", _DeviceInfo * _MAX_DEVICES),
        ("counters", _Counters),
    ]


#: Fields of struct mitosis_resumed, in ABI order (u64 each).
RESUME_REPORT_FIELDS = (
    "resume_start_ns", "resume_ns", "in_module_ns", "connect_ns", "open_ns", "fetch_ns",
    "eager_pages", "prefetched_pages", "round_trips",
)


class _Resumed(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in RESUME_REPORT_FIELDS]


class ThreadsAliveError(OSError):
    """fork_prepare refused: other threads are alive in this process, and a child
    would start without them (only the calling thread is captured, as with fork()).
    `threads` lists them as (tid, description)."""

    def __init__(self, message, threads):
        super().__init__(_errno.EBUSY, message)
        self.threads = threads


# Why an operation fails, by errno, where the module gives the errno a specific meaning
# (docs/abi.md); the generic strerror text comes first.
_CAUSES = {
    "open": {
        _errno.ENOENT: "no /dev/mitosis: is mitosis.ko loaded?",
        _errno.EACCES: "no permission on /dev/mitosis",
    },
    "fork_prepare": {
        _errno.EBUSY: "other threads are alive or the address space is shared",
        _errno.ENOMEM: "the snapshot is larger than the module's limit or memory ran out",
        _errno.EPERM: "the module refuses snapshots from this caller",
    },
    "fork_resume": {
        _errno.EINVAL: "malformed handle (IP:PORT/ID/SECRET, 32 hex digits)",
        _errno.EACCES: "the parent refused: unknown or released snapshot, or wrong secret",
        _errno.ECONNREFUSED: "nothing listens at the parent's address and port",
        _errno.ETIMEDOUT: "the parent's host did not answer in time",
        _errno.EHOSTUNREACH: "the parent's host is unreachable",
        _errno.ENETUNREACH: "no route to the parent's host",
        _errno.EBADMSG: "the snapshot's descriptor failed authentication",
        _errno.EPERM: "this host runs children unprivileged only (unprivileged_children=1)",
        _errno.EBUSY: "this process has other threads",
        _errno.ENODEV: "no active RDMA device on this host",
    },
    "release": {
        _errno.EINVAL: "malformed handle",
        _errno.ENOENT: "no such snapshot on this host (already released?)",
        _errno.EACCES: "wrong secret for this snapshot",
    },
}


def _fail(op, rc, detail=""):
    code = -rc
    text = f"mitosis.{op}: {os.strerror(code)}"
    cause = _CAUSES.get(op, {}).get(code)
    if cause:
        text += f" ({cause})"
    if detail:
        text += f": {detail}"
    # OSError(errno, text) constructs the subclass that fits the errno
    # (ConnectionRefusedError, PermissionError, TimeoutError, FileNotFoundError, ...).
    return OSError(code, text)


def _load_library():
    """libmitosis.so: $MITOSIS_LIBRARY, next to this package, or the loader's path."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.environ.get("MITOSIS_LIBRARY"), os.path.join(here, "libmitosis.so"), "libmitosis.so"]
    errors = []
    for path in filter(None, candidates):
        try:
            # PyDLL: the GIL stays held across every call. fork_prepare must not let
            # another Python thread run between the seed's fork and the capture, and
            # the child comes back holding the GIL exactly as the seed had it.
            return ctypes.PyDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError("mitosis: cannot load libmitosis.so (" + "; ".join(errors) + ")")


_lib = _load_library()
_handle_p = ctypes.c_void_p
_lib.mitosis_open.argtypes = [ctypes.POINTER(_handle_p)]
_lib.mitosis_close.argtypes = [_handle_p]
_lib.mitosis_close.restype = None
_lib.mitosis_version.argtypes = [_handle_p, ctypes.POINTER(ctypes.c_uint32)]
_lib.mitosis_status.argtypes = [_handle_p, ctypes.POINTER(_Status), ctypes.c_size_t]
_lib.mitosis_fork_prepare.argtypes = [_handle_p, ctypes.c_char_p, ctypes.c_uint32]
_lib.mitosis_fork_resume.argtypes = [_handle_p, ctypes.c_char_p, ctypes.c_uint32]
_lib.mitosis_fork_release.argtypes = [_handle_p, ctypes.c_char_p, ctypes.c_uint32]
_lib.mitosis_resumed.argtypes = [ctypes.POINTER(_Resumed), ctypes.c_size_t]
for _f in ("open", "version", "status", "fork_prepare", "fork_resume", "fork_release",
           "resumed"):
    getattr(_lib, "mitosis_" + _f).restype = ctypes.c_int

_device = None
_device_lock = threading.Lock()
_child = False


def _dev():
    """The library's handle on /dev/mitosis, opened on first use and kept."""
    global _device
    with _device_lock:
        if _device is None:
            h = _handle_p()
            rc = _lib.mitosis_open(ctypes.byref(h))
            if rc < 0:
                raise _fail("open", rc)
            _device = h
        return _device


def close():
    """Closes the library's descriptor of /dev/mitosis (each open one holds the module:
    `rmmod` waits for none). The next call opens it again."""
    global _device
    with _device_lock:
        if _device is not None:
            _lib.mitosis_close(_device)
            _device = None


def _handle_bytes(op, handle):
    if not isinstance(handle, str):
        raise TypeError(f"mitosis.{op}: the handle is a str, not {type(handle).__name__}")
    b = handle.strip().encode()
    if not b or len(b) >= HANDLE_MAX or b"\0" in b:
        raise _fail(op, -_errno.EINVAL, repr(handle))
    return b


def _other_threads():
    """Every thread of this process but the caller, as (tid, description)."""
    me = threading.get_native_id()
    python_threads = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
    found = []
    for entry in sorted(os.listdir("/proc/self/task"), key=int):
        tid = int(entry)
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue  # exited meanwhile
        if tid in python_threads:
            found.append((tid, f"Python thread {python_threads[tid]!r}"))
        else:
            found.append((tid, f"native thread {comm!r}"))
    return found


# Libraries known to keep worker pools, and what stops them from starting any.
_POOLS = (
    ("libopenblas", "OPENBLAS_NUM_THREADS=1"),
    ("libscipy_openblas", "OPENBLAS_NUM_THREADS=1"),
    ("libgomp", "OMP_NUM_THREADS=1"),
    ("libiomp", "OMP_NUM_THREADS=1"),
    ("libmkl", "MKL_NUM_THREADS=1"),
)


def _refuse_threads(threads):
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        maps = ""
    pools = sorted({(lib, env) for lib, env in _POOLS if lib in maps})
    listed = ", ".join(f"{d} (tid {t})" for t, d in threads)
    remedy = "join or stop Python threads before fork_prepare()"
    if pools:
        libs = ", ".join(lib for lib, _ in pools)
        envs = " ".join(sorted({env for _, env in pools}))
        remedy += (
            f"; {libs} is loaded and keeps a thread pool: start the interpreter with "
            f"{envs} (or limit the pool with threadpoolctl before preparing)"
        )
    msg = (
        f"mitosis.fork_prepare: {len(threads)} other thread(s) alive, which a child "
        f"would start without: {listed}. Remedy: {remedy}."
    )
    return ThreadsAliveError(msg, threads)


def _trim_heap():
    """Gives the C heap's free pages back to the kernel (glibc's malloc_trim(0), which
    since glibc 2.8 releases the free pages inside every arena, not only the top)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return  # not glibc: nothing to trim with
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)


def fork_prepare(freeze_gc=True, trim_heap=True):
    """Snapshots this interpreter. Returns the handle (a str: IP:PORT/ID/SECRET/CLOCK)
    in the caller and None in every child resumed from it, like os.fork() returns a pid
    and 0. Raises ThreadsAliveError when other threads are alive (a child would lose
    them) and OSError for the module's refusals.

    With `freeze_gc` (the default) the snapshot's objects are collected once and moved
    to the garbage collector's permanent generation (gc.freeze()), as prefork servers
    do: a child's collections then never walk (and so never fetch) the seed's heap, only
    what the child allocates. The caller's objects go back to the collector afterwards
    (gc.unfreeze()); children keep them frozen.

    With `trim_heap` (the default) the C heap's free pages go back to the kernel
    (malloc_trim(0)) right before the snapshot: they become holes, so a child that
    allocates there gets fresh zero pages instead of fetching the seed's garbage."""
    global _child
    threads = _other_threads()
    if threads:
        raise _refuse_threads(threads)
    dev = _dev()
    # Buffered output would be written again by every child.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    buf = ctypes.create_string_buffer(HANDLE_MAX)
    api = ctypes.pythonapi
    if freeze_gc:
        gc.collect()
        gc.freeze()
    if trim_heap:
        _trim_heap()
    # The interpreter's own fork protocol (what os.fork() does): before-fork hooks and
    # the import lock here, then in the child the runtime re-initialises its locks and
    # thread state and runs the after-fork hooks (random reseeds, logging resets its
    # locks, threading forgets other threads), and the parent runs its own hooks.
    api.PyOS_BeforeFork()
    rc = _lib.mitosis_fork_prepare(dev, buf, HANDLE_MAX)
    if rc == 0:
        api.PyOS_AfterFork_Child()
        _child = True
        return None
    api.PyOS_AfterFork_Parent()
    if freeze_gc:
        gc.unfreeze()
    if rc == -_errno.EBUSY:
        threads = _other_threads()
        if threads:
            raise _refuse_threads(threads)
    if rc < 0:
        raise _fail("fork_prepare", rc)
    return buf.value.decode()


def fork_resume(handle, eager=False):
    """Makes this process a child of the snapshot: on success it does not return here
    (the process continues in the seed's fork_prepare(), which returns None). Raises
    OSError, with this process unchanged, when the resume fails."""
    b = _handle_bytes("fork_resume", handle)
    rc = _lib.mitosis_fork_resume(_dev(), b, _RESUME_EAGER if eager else 0)
    raise _fail("fork_resume", rc if rc < 0 else -_errno.EIO, handle.split("/")[0])


def release(handle, force=False):
    """Ends a snapshot on the host that prepared it. Running children keep working
    unless `force` (then their next remote fault gets SIGBUS)."""
    b = _handle_bytes("release", handle)
    rc = _lib.mitosis_fork_release(_dev(), b, _RELEASE_FORCE if force else 0)
    if rc < 0:
        raise _fail("release", rc)


def is_child():
    """True in a process resumed from a snapshot (fork_prepare() returned None)."""
    return _child


def resume_report():
    """In a child: how its resume went, as a dict of RESUME_REPORT_FIELDS (times in
    nanoseconds of CLOCK_MONOTONIC: resume_start_ns when the resume call entered the
    module, as the kernel reads it, without a time namespace's offset; resume_ns from
    then to the child's first instruction, of which in_module_ns in the module, with
    connect_ns, open_ns and fetch_ns; pages read before the child ran; round trips).
    None in a process that was not resumed."""
    r = _Resumed()
    rc = _lib.mitosis_resumed(ctypes.byref(r), ctypes.sizeof(r))
    if rc == -_errno.ENOENT:
        return None
    if rc < 0:
        raise _fail("resume_report", rc)
    return {n: getattr(r, n) for n in RESUME_REPORT_FIELDS}


def version():
    """{'abi_version': N} of the loaded module."""
    v = ctypes.c_uint32()
    rc = _lib.mitosis_version(_dev(), ctypes.byref(v))
    if rc < 0:
        raise _fail("version", rc)
    return {"abi_version": v.value}


def status():
    """The module's state as a dict: listen_port, connections, devices (name,
    port_state, active) and every counter."""
    s = _Status()
    rc = _lib.mitosis_status(_dev(), ctypes.byref(s), ctypes.sizeof(s))
    if rc < 0:
        raise _fail("status", rc)
    devices = []
    for d in s.devices[: min(s.n_devices, _MAX_DEVICES)]:
        devices.append({
            "name": d.name.decode(errors="replace"),
            "port_state": d.port_state,
            "active": d.port_state == 4,
        })
    return {
        "abi_version": s.hdr.abi_version,
        "listen_port": s.listen_port,
        "connections": s.n_connections,
        "devices": devices,
        "counters": {n: getattr(s.counters, n) for n in COUNTERS},
    }


def _layout():
    """Sizes and offsets of the ctypes structs (the host tests compare them with Rust)."""
    return {
        "status_size": ctypes.sizeof(_Status),
        "counters_offset": _Status.counters.offset,
        "devices_offset": _Status.devices.offset,
        "device_size": ctypes.sizeof(_DeviceInfo),
        "counters": list(COUNTERS),
        "counter_offsets": [getattr(_Counters, n).offset for n in COUNTERS],
        "resumed_size": ctypes.sizeof(_Resumed),
        "resumed_fields": list(RESUME_REPORT_FIELDS),
    }
