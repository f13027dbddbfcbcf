//! Registers loaded around the raw capture syscall and checked afterwards (in the seed
//! and, resumed, in every child).

use super::*;

/// What differed after the capture syscall (bits of [`REGISTER_MISMATCH`]).
pub(super) mod mismatch {
    /// ymm0-15 differed.
    pub(crate) const VECTOR: u32 = 1;
    /// r8-r10 or r12-r15 differed.
    pub(crate) const GENERAL: u32 = 2;
    /// The CPU has no AVX: vector registers were not checked.
    pub(crate) const NO_AVX: u32 = 4;
}

/// The last register check, as [`mismatch`] bits.
pub(super) static REGISTER_MISMATCH: AtomicU32 = AtomicU32::new(0);

pub(super) const REG_PATTERN: [u64; 64] = {
    let mut a = [0u64; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = 0x5a5a_0000_0000_0000 | (i as u64 * 0x0101_0101);
        i += 1;
    }
    a
};
pub(super) const GPR: [u64; 7] = [
    0x1212_1212_1212_1212,
    0x1313_1313_1313_1313,
    0x1414_1414_1414_1414,
    0x1515_1515_1515_1515,
    0x0808_0808_0808_0808,
    0x0909_0909_0909_0909,
    0x1010_1010_1010_1010,
];

/// `CaptureFn` that loads ymm0-15, r8-r10 and r12-r15 with known values, makes the
/// raw `FORK_CAPTURE` syscall, and checks them afterwards (in the seed and, resumed,
/// in every child).
///
/// # Safety
///
/// As `mitosis::fork::ioctl_capture`.
pub(super) unsafe fn capture_with_registers(fd: i32, args: *mut abi::ForkCaptureArgs) -> i64 {
    if !std::arch::is_x86_feature_detected!("avx") {
        REGISTER_MISMATCH.store(mismatch::NO_AVX, Ordering::SeqCst);
        // SAFETY: per the contract.
        return unsafe { mitosis::fork::ioctl_capture(fd, args) };
    }
    // SAFETY: AVX is present.
    unsafe { capture_avx(fd, args) }
}

#[target_feature(enable = "avx")]
pub(super) unsafe fn capture_avx(fd: i32, args: *mut abi::ForkCaptureArgs) -> i64 {
    let mut out = [0u64; 64];
    let ret: i64;
    let (mut r12, mut r13, mut r14, mut r15) = (GPR[0], GPR[1], GPR[2], GPR[3]);
    let (mut r8, mut r9, mut r10) = (GPR[4], GPR[5], GPR[6]);
    // SAFETY: a raw ioctl syscall; every register it or we change is declared.
    unsafe {
        std::arch::asm!(
            "vmovdqu ymm0, [{p}]", "vmovdqu ymm1, [{p} + 32]", "vmovdqu ymm2, [{p} + 64]",
            "vmovdqu ymm3, [{p} + 96]", "vmovdqu ymm4, [{p} + 128]", "vmovdqu ymm5, [{p} + 160]",
            "vmovdqu ymm6, [{p} + 192]", "vmovdqu ymm7, [{p} + 224]", "vmovdqu ymm8, [{p} + 256]",
            "vmovdqu ymm9, [{p} + 288]", "vmovdqu ymm10, [{p} + 320]", "vmovdqu ymm11, [{p} + 352]",
            "vmovdqu ymm12, [{p} + 384]", "vmovdqu ymm13, [{p} + 416]", "vmovdqu ymm14, [{p} + 448]",
            "vmovdqu ymm15, [{p} + 480]",
            "syscall",
            "vmovdqu [{o}], ymm0", "vmovdqu [{o} + 32], ymm1", "vmovdqu [{o} + 64], ymm2",
            "vmovdqu [{o} + 96], ymm3", "vmovdqu [{o} + 128], ymm4", "vmovdqu [{o} + 160], ymm5",
            "vmovdqu [{o} + 192], ymm6", "vmovdqu [{o} + 224], ymm7", "vmovdqu [{o} + 256], ymm8",
            "vmovdqu [{o} + 288], ymm9", "vmovdqu [{o} + 320], ymm10", "vmovdqu [{o} + 352], ymm11",
            "vmovdqu [{o} + 384], ymm12", "vmovdqu [{o} + 416], ymm13", "vmovdqu [{o} + 448], ymm14",
            "vmovdqu [{o} + 480], ymm15",
            p = in(reg) REG_PATTERN.as_ptr(),
            o = in(reg) out.as_mut_ptr(),
            inlateout("rax") libc::SYS_ioctl => ret,
            in("rdi") fd as i64,
            in("rsi") abi::IOC_FORK_CAPTURE as u64,
            in("rdx") args,
            out("rcx") _, out("r11") _,
            inout("r8") r8, inout("r9") r9, inout("r10") r10,
            inout("r12") r12, inout("r13") r13, inout("r14") r14, inout("r15") r15,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
    let g = [r12, r13, r14, r15, r8, r9, r10];
    let mut bad = 0;
    if out != REG_PATTERN {
        bad |= mismatch::VECTOR;
    }
    if g != GPR {
        bad |= mismatch::GENERAL;
    }
    REGISTER_MISMATCH.store(bad, Ordering::SeqCst);
    ret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_capture_syscall_reaches_ioctl_and_keeps_registers() {
        let mut a = abi::ForkCaptureArgs::default();
        // SAFETY: an invalid descriptor: the kernel answers EBADF without touching `a`.
        let r = unsafe { capture_with_registers(-1, &mut a) };
        assert_eq!(r, -(libc::EBADF as i64));
        assert_eq!(
            REGISTER_MISMATCH.load(Ordering::SeqCst) & (mismatch::VECTOR | mismatch::GENERAL),
            0
        );
    }
}
