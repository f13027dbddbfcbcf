"""Host tests of the Python package (no module needed): argument checks, the threads
refusal, errno-to-exception mapping and the module-not-loaded error. The guests test
the rest (tests/scenarios/functions.py). Run: python3 -m unittest discover -s python/tests
with MITOSIS_LIBRARY pointing at a built libmitosis.so."""

import errno
import os
import sys
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mitosis  # noqa: E402


class Arguments(unittest.TestCase):
    def test_handle_must_be_str(self):
        with self.assertRaises(TypeError):
            mitosis.release(b"1.2.3.4:1/1/00")
        with self.assertRaises(TypeError):
            mitosis.fork_resume(None)

    def test_empty_or_long_handle_is_einval(self):
        for bad in ("", " ", "x" * mitosis.HANDLE_MAX, "a\0b"):
            with self.assertRaises(OSError) as cm:
                mitosis.release(bad)
            self.assertEqual(cm.exception.errno, errno.EINVAL, bad)
            self.assertIn("malformed handle", str(cm.exception))


class Threads(unittest.TestCase):
    def test_other_threads_refused_with_names_and_remedy(self):
        stop = threading.Event()
        t = threading.Thread(target=stop.wait, name="warmup-pool")
        t.start()
        try:
            with self.assertRaises(mitosis.ThreadsAliveError) as cm:
                mitosis.fork_prepare()
        finally:
            stop.set()
            t.join()
        e = cm.exception
        self.assertIsInstance(e, OSError)
        self.assertEqual(e.errno, errno.EBUSY)
        self.assertEqual([tid for tid, _ in e.threads], [t.native_id])
        self.assertIn("Python thread 'warmup-pool'", str(e))
        self.assertIn("Remedy", str(e))

    def test_pool_advice_names_the_library(self):
        e = mitosis._refuse_threads([(7, "native thread 'x'")])
        self.assertIn("native thread 'x' (tid 7)", str(e))


class TrimHeap(unittest.TestCase):
    @unittest.skipUnless(os.path.exists("/proc/self/statm"), "needs /proc")
    def test_free_heap_pages_go_back_to_the_kernel(self):
        def resident_pages():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1])
        # 40 MB of written blocks in the C heap (each under the mmap threshold), then a
        # block above them that stays: free() alone cannot shrink the heap's top.
        blocks = [bytearray(b"x" * 100_000) for _ in range(400)]
        tail = bytearray(b"y" * 100_000)
        del blocks
        before = resident_pages()
        mitosis._trim_heap()
        after = resident_pages()
        self.assertGreater(before - after, 5000, (before, after))
        self.assertEqual(tail[0], ord("y"))


class Errors(unittest.TestCase):
    def test_errno_picks_the_exception_class_and_cause(self):
        cases = [
            ("fork_resume", errno.ECONNREFUSED, ConnectionRefusedError, "nothing listens"),
            ("fork_resume", errno.EACCES, PermissionError, "unknown or released"),
            ("fork_resume", errno.ETIMEDOUT, TimeoutError, "did not answer"),
            ("open", errno.ENOENT, FileNotFoundError, "is mitosis.ko loaded?"),
            ("release", errno.ENOENT, FileNotFoundError, "no such snapshot"),
            ("release", errno.EACCES, PermissionError, "wrong secret"),
            ("fork_prepare", errno.ENOMEM, MemoryError, None),
        ]
        for op, code, cls, cause in cases:
            e = mitosis._fail(op, -code)
            if cls is MemoryError:
                self.assertIsInstance(e, OSError)  # no OSError subclass for ENOMEM
            else:
                self.assertIsInstance(e, cls, (op, code))
            self.assertEqual(e.errno, code)
            self.assertTrue(e.strerror.startswith(f"mitosis.{op}: "), e.strerror)
            if cause:
                self.assertIn(cause, str(e))

    def test_no_resume_report_outside_a_child(self):
        # Needs no module: the report lives in the library, set only in a child.
        self.assertIsNone(mitosis.resume_report())
        self.assertFalse(mitosis.is_child())

    @unittest.skipIf(os.path.exists("/dev/mitosis"), "the module is loaded on this host")
    def test_module_not_loaded(self):
        with self.assertRaises(FileNotFoundError) as cm:
            mitosis.status()
        self.assertIn("is mitosis.ko loaded?", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
