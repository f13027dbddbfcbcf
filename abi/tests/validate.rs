//! What a child host checks before it applies a peer's snapshot: the task state
//! (registers, pointers, mm layout, rseq, sigaltstack, signal dispositions), the VMA
//! range and checked page arithmetic of the descriptor, and the FPU image. Every
//! hostile value is refused with its reason; no input panics.

use mitosis_abi::ioctl::Pod;
use mitosis_abi::snapshot::{
    self, reg, DescError, Descriptor, PageRun, StateError, TaskState, Vma, RUN_PRESENT,
    TASK_STATE_LEN, USER_SA_FLAGS, X86_64_LIMITS,
};
use mitosis_abi::xsave::{self, Component, ComponentInfo, XsaveError, XsaveFormat};
use proptest::prelude::*;

const LIM: snapshot::UserLimits = X86_64_LIMITS;
const ARGS_LEN: u64 = 96;

/// A state as a real 64-bit process would have it.
fn good_state() -> TaskState {
    let mut st = TaskState::default();
    st.regs[reg::IP] = 0x40_1000;
    st.regs[reg::SP] = 0x7ffd_0000_0000;
    st.fsbase = 0x7f00_0000_1000;
    st.rseq = 0x7f00_0000_2020;
    st.rseq_len = 32;
    st.rseq_sig = 0x5305_3053;
    st.robust_list = 0x7f00_0000_3000;
    st.clear_child_tid = 0x7f00_0000_4000;
    st.capture_args = 0x7ffd_0000_1000;
    st.start_code = 0x40_0000;
    st.end_code = 0x50_0000;
    st.start_data = 0x60_0000;
    st.end_data = 0x61_0000;
    st.start_brk = 0x70_0000;
    st.brk = 0x72_0000;
    st.start_stack = 0x7ffd_0000_2000;
    st.arg_start = 0x7ffd_0000_3000;
    st.arg_end = 0x7ffd_0000_3100;
    st.env_start = 0x7ffd_0000_3100;
    st.env_end = 0x7ffd_0000_3200;
    st.sigactions[9].handler = 0x40_2000;
    st.sigactions[9].flags = 0x0400_0000 | 0x4 | 0x1000_0000;
    st.sigactions[9].restorer = 0x40_3000;
    st.sigactions[12].handler = 1; // SIG_IGN
    st
}

#[test]
fn a_real_state_passes() {
    assert_eq!(good_state().validate(&LIM, ARGS_LEN), Ok(()));
}

/// A named hostile change and the reason it must be refused for.
type Case = (&'static str, fn(&mut TaskState), StateError);

/// One hostile change per case, each with the reason it must be refused for.
#[test]
fn each_hostile_field_is_refused() {
    let top = LIM.task_size;
    let cases: Vec<Case> = vec![
        (
            "kernel ip",
            |s| s.regs[reg::IP] = 0xffff_8000_0000_0000,
            StateError::Register,
        ),
        (
            "non-canonical sp",
            |s| s.regs[reg::SP] = 1 << 62,
            StateError::Register,
        ),
        (
            "kernel fsbase",
            |s| s.fsbase = u64::MAX,
            StateError::Register,
        ),
        (
            "gsbase past TASK_SIZE",
            |s| s.gsbase = X86_64_LIMITS.task_size + 1,
            StateError::Register,
        ),
        (
            "code below mmap_min_addr",
            |s| s.start_code = 0x1000,
            StateError::MmLayout,
        ),
        (
            "empty code",
            |s| s.end_code = s.start_code,
            StateError::MmLayout,
        ),
        (
            "brk below start",
            |s| s.brk = s.start_brk - 4096,
            StateError::MmLayout,
        ),
        (
            "args reversed",
            |s| s.arg_end = s.arg_start - 1,
            StateError::MmLayout,
        ),
        (
            "env past TASK_SIZE",
            |s| s.env_end = u64::MAX,
            StateError::MmLayout,
        ),
        (
            "no capture args",
            |s| s.capture_args = 0,
            StateError::Pointer,
        ),
        (
            "capture args overflow",
            |s| s.capture_args = u64::MAX - 7,
            StateError::Pointer,
        ),
        (
            "capture args at the top",
            |s| s.capture_args = X86_64_LIMITS.task_size - 8,
            StateError::Pointer,
        ),
        (
            "robust list misaligned",
            |s| s.robust_list += 1,
            StateError::Pointer,
        ),
        (
            "tid in kernel",
            |s| s.set_child_tid = 0xffff_ffff_8000_0000,
            StateError::Pointer,
        ),
        ("rseq misaligned", |s| s.rseq += 8, StateError::Rseq),
        ("rseq short", |s| s.rseq_len = 16, StateError::Rseq),
        ("rseq huge", |s| s.rseq_len = u32::MAX, StateError::Rseq),
        ("rseq len without area", |s| s.rseq = 0, StateError::Rseq),
        (
            "altstack wraps",
            |s| {
                s.sas_ss_sp = u64::MAX - 100;
                s.sas_ss_size = 4096
            },
            StateError::AltStack,
        ),
        (
            "altstack flags",
            |s| {
                s.sas_ss_sp = 0x7f00_0010_0000;
                s.sas_ss_size = 8192;
                s.sas_ss_flags = 2
            },
            StateError::AltStack,
        ),
        (
            "altstack unknown mode",
            |s| s.sas_ss_flags = 4,
            StateError::AltStack,
        ),
        (
            "altstack disabled with a stack size",
            |s| {
                s.sas_ss_size = 8192;
                s.sas_ss_flags = snapshot::SS_DISABLE
            },
            StateError::AltStack,
        ),
        (
            "altstack pointer without size",
            |s| s.sas_ss_sp = 0x7f00_0010_0000,
            StateError::AltStack,
        ),
        (
            "SA_IMMUTABLE",
            |s| s.sigactions[9].flags |= 0x0080_0000,
            StateError::SigAction,
        ),
        (
            "SA_IA32_ABI",
            |s| s.sigactions[9].flags |= 0x0200_0000,
            StateError::SigAction,
        ),
        (
            "kernel handler",
            |s| s.sigactions[3].handler = 0xffff_ffff_8100_0000,
            StateError::SigAction,
        ),
        (
            "kernel restorer",
            |s| s.sigactions[9].restorer = u64::MAX,
            StateError::SigAction,
        ),
    ];
    for (what, change, why) in cases {
        let mut st = good_state();
        change(&mut st);
        assert_eq!(st.validate(&LIM, ARGS_LEN), Err(why), "{what}");
    }
    // The edges that must still pass.
    let mut st = good_state();
    st.capture_args = top - ARGS_LEN;
    st.sas_ss_sp = 0x7f00_0010_0000;
    st.sas_ss_size = 8192;
    st.sas_ss_flags = snapshot::SS_AUTODISARM;
    st.sigactions[1].flags = USER_SA_FLAGS;
    st.sigactions[1].restorer = 0x40_3000;
    assert_eq!(st.validate(&LIM, ARGS_LEN), Ok(()));
    // What sigaltstack(SS_DISABLE) and sas_ss_reset leave (seen in CPython seeds), and
    // an enabling call that passed SS_ONSTACK.
    for flags in [
        snapshot::SS_DISABLE,
        snapshot::SS_DISABLE | snapshot::SS_AUTODISARM,
    ] {
        let mut st = good_state();
        st.sas_ss_flags = flags;
        assert_eq!(st.validate(&LIM, ARGS_LEN), Ok(()), "{flags:#x}");
    }
    let mut st = good_state();
    st.sas_ss_sp = 0x7f00_0010_0000;
    st.sas_ss_size = 8192;
    st.sas_ss_flags = snapshot::SS_ONSTACK;
    assert_eq!(st.validate(&LIM, ARGS_LEN), Ok(()));
}

proptest! {
    /// Any bytes read as a task state: validation answers, never panics, and what it
    /// accepts is inside user space.
    #[test]
    fn arbitrary_states_never_panic(bytes in proptest::collection::vec(any::<u8>(), TASK_STATE_LEN)) {
        let st = TaskState::from_bytes(&bytes).unwrap();
        if st.validate(&LIM, ARGS_LEN).is_ok() {
            prop_assert!(st.regs[reg::IP] < LIM.task_size);
            prop_assert!(st.capture_args.checked_add(ARGS_LEN).unwrap() <= LIM.task_size);
            prop_assert!(st.sigactions.iter().all(|a| a.flags & !USER_SA_FLAGS == 0));
        }
    }

    /// A real state with one word replaced by any value: accepted only if still sane.
    #[test]
    fn one_word_mutations(word in 0usize..(TASK_STATE_LEN / 8), value in any::<u64>()) {
        let st = good_state();
        let mut bytes = st.as_bytes().to_vec();
        bytes[word * 8..word * 8 + 8].copy_from_slice(&value.to_le_bytes());
        let m = TaskState::from_bytes(&bytes).unwrap();
        if m.validate(&LIM, ARGS_LEN).is_ok() {
            for a in [m.start_code, m.end_code, m.brk, m.arg_start, m.env_end] {
                prop_assert!(LIM.mm_addr(a));
            }
            prop_assert!(m.regs[reg::SP] <= LIM.task_size);
        }
    }
}

fn desc(vmas: &[Vma], runs: &[PageRun], data: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 1 << 16];
    let n = snapshot::encode(vmas, runs, data, b"", &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn one_vma(start: u64, pages: u64, data_page: u64, data: u64) -> Vec<u8> {
    let v = Vma {
        start,
        end: start + pages * 4096,
        n_runs: 1,
        ..Default::default()
    };
    let r = PageRun {
        page: 0,
        n_pages: pages as u32,
        kind: RUN_PRESENT,
        data_page,
    };
    desc(&[v], &[r], data)
}

#[test]
fn vmas_outside_user_space_are_refused() {
    for (start, ok) in [
        (0x1000, false),
        (0x1_0000, true),
        (LIM.task_size - 4096, true),
        (LIM.task_size, false),
        (0xffff_8000_0000_0000, false),
    ] {
        let b = one_vma(start, 1, 0, 1);
        let d = Descriptor::parse(&b).unwrap();
        assert_eq!(d.check_limits(&LIM).is_ok(), ok, "{start:#x}");
    }
}

#[test]
fn data_offsets_are_checked() {
    let b = one_vma(0x10_0000, 4, 2, 6);
    let d = Descriptor::parse(&b).unwrap();
    assert_eq!(d.data_offset_of(0x10_0000), Some(2 * 4096));
    assert_eq!(d.data_offset_of(0x10_3fff), Some(5 * 4096));
    assert_eq!(d.data_offset_of(0x10_4000), None);
    assert_eq!(d.data_bytes(), Some(6 * 4096));
    // A data page count whose byte size overflows parses (it is only a count) but
    // has no byte size: the child refuses it against the registered size.
    let huge = one_vma(0x10_0000, 1, 0, u64::MAX);
    let d = Descriptor::parse(&huge).unwrap();
    assert_eq!(d.data_bytes(), None);
    // Data pages near the top: the offset multiplication would overflow.
    let top = one_vma(0x10_0000, 2, u64::MAX / 4096, u64::MAX);
    match Descriptor::parse(&top) {
        Ok(d) => assert_eq!(d.data_offset_of(0x10_1000), None),
        Err(e) => assert_eq!(e, DescError::BadRun),
    }
}

#[test]
fn file_windows_map_each_vma_and_stop_at_its_end() {
    use snapshot::{window_offset, VMA_WINDOW};
    // Two adjacent VMAs: a child growing the first with mremap must read zeros, not
    // the second's data (it did when file offset = address).
    let v = [
        Vma {
            start: 0x10_0000,
            end: 0x10_2000,
            first_run: 0,
            n_runs: 1,
            ..Default::default()
        },
        Vma {
            start: 0x10_2000,
            end: 0x10_3000,
            first_run: 1,
            n_runs: 1,
            ..Default::default()
        },
    ];
    let r = [
        PageRun {
            page: 0,
            n_pages: 2,
            kind: RUN_PRESENT,
            data_page: 0,
        },
        PageRun {
            page: 0,
            n_pages: 1,
            kind: RUN_PRESENT,
            data_page: 2,
        },
    ];
    let b = desc(&v, &r, 3);
    let d = Descriptor::parse(&b).unwrap();
    assert_eq!(d.data_offset_at(window_offset(0)), Some(0));
    assert_eq!(d.data_offset_at(window_offset(0) + 4096), Some(4096));
    assert_eq!(
        d.data_offset_at(window_offset(0) + 8192),
        None,
        "grown part of VMA 0"
    );
    assert_eq!(d.data_offset_at(window_offset(1)), Some(8192));
    assert_eq!(d.data_offset_at(window_offset(2)), None);
    assert_eq!(d.data_offset_at(VMA_WINDOW - 1), None);
    // Addresses and windows agree inside the VMAs.
    for (i, vma) in v.iter().enumerate() {
        for a in (vma.start..vma.end).step_by(4096) {
            assert_eq!(
                d.data_offset_at(window_offset(i) + a - vma.start),
                d.data_offset_of(a)
            );
        }
    }
    assert_eq!(
        window_offset(snapshot::MAX_WINDOWED_VMAS - 1) + (VMA_WINDOW - 1),
        i64::MAX as u64
    );
}

proptest! {
    /// The fault path's arithmetic on any header-valid bytes never panics.
    #[test]
    fn data_offsets_never_panic(flip in 0usize..200, byte in any::<u8>(), addr in any::<u64>()) {
        let mut b = one_vma(0x10_0000, 8, 3, 11);
        let i = flip % b.len();
        b[i] = byte;
        if let Ok(d) = Descriptor::parse_validated(&b) {
            let _ = d.data_offset_at(addr);
            let _ = d.data_offset_of(addr);
            let _ = d.data_offset_of(0x10_0000 + addr % 0x8000);
            let _ = d.check_limits(&LIM);
            let _ = d.data_bytes();
        }
    }
}

/// A host with AVX in the standard format (XSAVE/XSAVEOPT, as under QEMU TCG).
fn standard_host() -> XsaveFormat {
    let components = XsaveFormat::layout(0, 0x7, 832, |i| match i {
        2 => ComponentInfo {
            size: 256,
            standard_offset: 576,
            align64: false,
        },
        _ => ComponentInfo::default(),
    })
    .unwrap();
    XsaveFormat {
        len: 832,
        xfeatures: 0x7,
        user_xfeatures: 0x7,
        xcomp_bv: 0,
        mxcsr_mask: 0xFFFF,
        components,
    }
}

/// A host with XSAVES: AVX (user) and CET_USER (11, supervisor), compacted.
fn compacted_host() -> XsaveFormat {
    let xfeatures = 0x7 | 1 << 11;
    let xcomp_bv = xsave::COMPACTED | xfeatures;
    let len = 576 + 256 + 16;
    let components = XsaveFormat::layout(xcomp_bv, xfeatures, len, |i| match i {
        2 => ComponentInfo {
            size: 256,
            standard_offset: 576,
            align64: false,
        },
        11 => ComponentInfo {
            size: 16,
            standard_offset: 0,
            align64: false,
        },
        _ => ComponentInfo::default(),
    })
    .unwrap();
    XsaveFormat {
        len,
        xfeatures,
        user_xfeatures: 0x7,
        xcomp_bv,
        mxcsr_mask: 0,
        components,
    }
}

fn image(fmt: &XsaveFormat, xstate_bv: u64, fill: u8) -> Vec<u8> {
    let mut b = vec![fill; fmt.len];
    b[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    b[512..520].copy_from_slice(&xstate_bv.to_le_bytes());
    b[520..528].copy_from_slice(&fmt.xcomp_bv.to_le_bytes());
    b[528..576].fill(0);
    b
}

#[test]
fn fpu_images_are_checked_like_the_kernels_uabi_copy() {
    let h = standard_host();
    assert_eq!(xsave::check(&image(&h, 0x7, 0x11), &h), Ok(()));
    assert_eq!(
        xsave::check(&image(&h, 0x7, 0)[..800], &h),
        Err(XsaveError::Length)
    );
    // PASID (10) or CET (11): supervisor state never comes from a peer.
    assert_eq!(
        xsave::check(&image(&h, 0x7 | 1 << 10, 0), &h),
        Err(XsaveError::Features)
    );
    assert_eq!(
        xsave::check(&image(&h, 1 << 9, 0), &h),
        Err(XsaveError::Features)
    );
    let mut b = image(&h, 0x7, 0);
    b[540] = 1;
    assert_eq!(xsave::check(&b, &h), Err(XsaveError::Header));
    let mut b = image(&h, 0x7, 0);
    b[520] = 1;
    assert_eq!(xsave::check(&b, &h), Err(XsaveError::Header));
    let mut b = image(&h, 0x7, 0);
    b[24..28].copy_from_slice(&0x1_0000u32.to_le_bytes());
    assert_eq!(xsave::check(&b, &h), Err(XsaveError::Mxcsr));
    // With the default mask, DAZ (bit 6) is reserved.
    let c = compacted_host();
    let mut b = image(&c, 0x7, 0);
    b[24..28].copy_from_slice(&0x40u32.to_le_bytes());
    assert_eq!(xsave::check(&b, &c), Err(XsaveError::Mxcsr));
}

#[test]
fn install_keeps_the_childs_supervisor_state() {
    let c = compacted_host();
    assert_eq!(
        c.components[2],
        Component {
            offset: 576,
            len: 256
        }
    );
    assert_eq!(
        c.components[11],
        Component {
            offset: 832,
            len: 16
        }
    );
    let mut dst = image(&c, 0x3 | 1 << 11, 0xAA);
    dst[28..32].copy_from_slice(&0xFFFFu32.to_le_bytes());
    let img = image(&c, 0x7, 0x55);
    xsave::install(&img, &mut dst, &c).unwrap();
    assert!(
        dst[576..832].iter().all(|&b| b == 0x55),
        "user component from the image"
    );
    assert!(
        dst[832..848].iter().all(|&b| b == 0xAA),
        "supervisor component kept"
    );
    assert_eq!(
        u64::from_le_bytes(dst[512..520].try_into().unwrap()),
        0x7 | 1 << 11
    );
    assert_eq!(u32::from_le_bytes(dst[28..32].try_into().unwrap()), 0xFFFF);
    // A refused image leaves the buffer untouched.
    let before = dst.clone();
    assert!(xsave::install(&image(&c, 1 << 11, 0x77), &mut dst, &c).is_err());
    assert_eq!(dst, before);
}

#[test]
fn layouts_past_the_buffer_are_refused() {
    let r = XsaveFormat::layout(xsave::COMPACTED | 0x7, 0x7, 700, |_| ComponentInfo {
        size: 256,
        standard_offset: 576,
        align64: true,
    });
    assert!(r.is_none());
}

proptest! {
    #[test]
    fn arbitrary_fpu_images_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..900)) {
        for h in [standard_host(), compacted_host()] {
            let mut dst = image(&h, 0x3, 0);
            if xsave::install(&bytes, &mut dst, &h).is_ok() {
                let bv = u64::from_le_bytes(dst[512..520].try_into().unwrap());
                prop_assert_eq!(bv & !h.xfeatures, 0);
            }
        }
    }
}
