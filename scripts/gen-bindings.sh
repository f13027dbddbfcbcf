#!/usr/bin/env bash
# Generates the module's own bindings (ffi/bindings_generated.rs) from
# ffi/bindings_wrapper.h with exactly the flags the kernel at KDIR used for its own
# Rust bindings (read back from rust/bindings/.bindings_generated.rs.cmd), so types and
# layouts agree with the running kernel's build.
#
#   scripts/gen-bindings.sh KDIR OUT
set -euo pipefail
kdir=$(cd "$1" && pwd)
out=$2
ffi=$(cd "$(dirname "$0")/../ffi" && pwd)
cmdfile="$kdir/rust/bindings/.bindings_generated.rs.cmd"
[ -f "$cmdfile" ] || { echo "gen-bindings: $cmdfile missing: is $kdir a built CONFIG_RUST kernel?" >&2; exit 1; }

line=$(sed -n 's/^savedcmd_rust\/bindings\/bindings_generated.rs := //p' "$cmdfile" | sed 's/ ; sed .*//')
# "bindgen HEADER <bindgen options> -o OUT -- <clang flags>"
opts=${line%% -o *}
opts=${opts#bindgen rust/bindings/bindings_helper.h }
cflags=${line#* -- }
cflags=$(echo "$cflags" | sed -E 's/-Wp,-MMD,[^ ]+//; s/KBUILD_MODNAME=[^ ]+/KBUILD_MODNAME='"'"'"mitosis"'"'"'/; s/-D__KBUILD_MODNAME=[^ ]+/-D__KBUILD_MODNAME=kmod_mitosis/')
opts=$(echo "$opts" | sed 's/--ctypes-prefix ffi/--ctypes-prefix kernel::ffi/')
# `struct sched_statistics` is empty with CONFIG_SCHEDSTATS=n but cacheline-aligned;
# bindgen 0.73 drops the alignment, shifting every later task_struct field by 16 bytes.
# Opaque, it keeps its size and alignment (checked by ffi/layout.list).
opts="$opts --opaque-type sched_statistics"

allow_fn='(__)?ib_.*|(__)?rdma_.*|misc_(de)?register|mitosis_.*|complete|complete_all|wait_for_completion_timeout|wait_for_completion_interruptible_timeout|wait_for_completion_killable_timeout|get_random_bytes|sg_init_table|alloc_workqueue|destroy_workqueue|queue_work_on|flush_workqueue|in4_pton|ktime_get|msecs_to_jiffies|_copy_to_user|ib_register_client|ib_unregister_client|ib_get_client_data|ib_set_client_data|get_user_pages_remote|pin_user_pages_remote|unpin_user_page|unpin_user_page_range_dirty_lock|vm_mmap|vm_munmap|find_vma|generic_file_mmap|filemap_fault|filemap_map_pages|filemap_page_mkwrite|alloc_file_pseudo|init_pseudo|kern_mount|kern_unmount|alloc_anon_inode|igrab|iput|ihold|truncate_inode_pages_final|clear_inode|kernel_fpu_begin_mask|kernel_fpu_end|sigprocmask|folio_unlock|fput|simple_statfs|generic_delete_inode|kill_anon_super|vfs_kern_mount|fs_context_for_mount|fc_mount|put_fs_context|mntget|mntput|noop_dirty_folio|force_sig|_copy_from_user|get_user_pages_fast_only|capable|filp_open|kernel_read|cancel_delayed_work_sync|lzorle1x_1_compress|lzo1x_decompress_safe'
allow_var='E[A-Z0-9]+|mitosis_.*|AF_INET|init_net|WQ_.*|FOLL_.*|VM_(READ|WRITE|EXEC|SHARED|GROWSDOWN|IO|PFNMAP|MIXEDMAP|WIPEONFORK|MAYREAD|NORESERVE)|PROT_.*|MAP_(PRIVATE|FIXED|FIXED_NOREPLACE|NORESERVE|ANONYMOUS|GROWSDOWN)|SIG_SETMASK|SIGKILL|SIGSTOP|SIGBUS|O_(RDONLY|NONBLOCK|NOCTTY|LARGEFILE|CLOEXEC)|SS_.*|SB_I_NOEXEC|TASK_SIZE_MAX|CAP_SYS_ADMIN|LZO_E_OK'
allow_ty='ib_.*|rdma_.*|sockaddr_in|sockaddr|miscdevice|file_operations|file|inode|completion|work_struct|delayed_work|scatterlist|dma_data_direction|task_struct|mm_struct|vm_area_struct|vm_operations_struct|pt_regs|fpstate|sighand_struct|k_sigaction|address_space_operations|address_space|super_operations|super_block|file_system_type|fs_context|pseudo_fs_context|folio|readahead_control|vfsmount|dentry|sigset_t|qstr|module|mitosis_.*'

cd "$kdir"
# shellcheck disable=SC2086
eval bindgen "$ffi/bindings_wrapper.h" $opts \
  --allowlist-function "'$allow_fn'" --allowlist-var "'$allow_var'" --allowlist-type "'$allow_ty'" \
  -o "$out.tmp" -- $cflags -I"$ffi"
mv "$out.tmp" "$out"
