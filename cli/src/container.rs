//! What `mitosis run` builds around a child, from its flags or from an OCI runtime
//! bundle (`config.json`, read with the `oci-spec` crate): root filesystem, mounts,
//! hostname, identity, network and cgroup limits. Pure data and parsing (host-tested);
//! `run.rs` applies it.

use mitosis::Identity;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::path::{Path, PathBuf};

/// The child's network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Net {
    /// A new, empty network namespace (loopback only, up).
    None,
    /// The host's network namespace.
    Host,
}

/// `cpu.max`: `quota_us` of CPU time per `period_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

/// The cgroup v2 limits of the child's group (`None`: unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub cpu: Option<CpuMax>,
    pub pids_max: Option<u64>,
}

/// One mount inside the root filesystem, as mount(2) takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// Inside the container.
    pub destination: PathBuf,
    pub fstype: String,
    /// The source (a path for bind mounts, a name otherwise).
    pub source: String,
    /// `MS_*` flags from the options.
    pub flags: u64,
    /// The options mount(2) passes to the filesystem (`mode=755,size=64m`).
    pub data: String,
}

impl MountSpec {
    /// A mount from its type, source and OCI/fstab-style options.
    pub fn new(destination: &str, fstype: &str, source: &str, options: &[&str]) -> Self {
        let (flags, data) = mount_options(options);
        let bind = flags & libc::MS_BIND != 0;
        MountSpec {
            destination: PathBuf::from(destination),
            fstype: if bind { String::new() } else { fstype.into() },
            source: source.into(),
            flags,
            data,
        }
    }

    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }
}

/// Splits mount options into `MS_*` flags and filesystem data, as runc does.
pub fn mount_options(options: &[&str]) -> (u64, String) {
    let mut flags = 0u64;
    let mut data = Vec::new();
    for &o in options {
        let (set, clear) = match o {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "noatime" => (libc::MS_NOATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            // Propagation is private for the whole container tree anyway.
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => (0, 0),
            _ => {
                data.push(o);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

/// Everything about the container but the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The root filesystem (`None`: the launcher's, with a fresh /proc).
    pub rootfs: Option<PathBuf>,
    pub readonly_root: bool,
    pub hostname: Option<String>,
    pub limits: Limits,
    pub net: Net,
    /// Unprivileged identity of the child (`None`: the launcher's).
    pub user: Option<Identity>,
    /// Mounts made inside `rootfs` before the switch, in order.
    pub mounts: Vec<MountSpec>,
}

impl Default for ContainerSpec {
    fn default() -> Self {
        ContainerSpec {
            rootfs: None,
            readonly_root: false,
            hostname: None,
            limits: Limits::default(),
            net: Net::Host,
            user: None,
            mounts: Vec::new(),
        }
    }
}

impl ContainerSpec {
    /// The mounts `--rootfs` gets without a bundle: /proc, a /dev for the device
    /// nodes, a /tmp.
    pub fn default_mounts() -> Vec<MountSpec> {
        vec![
            MountSpec::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            MountSpec::new("/dev", "tmpfs", "tmpfs", &["nosuid", "mode=755"]),
            MountSpec::new("/tmp", "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=1777"]),
        ]
    }

    /// Reads an OCI runtime bundle: `DIR/config.json` and the root it names
    /// (relative to DIR). What the bundle asks for and `mitosis run` cannot give is
    /// refused with the reason, never silently dropped. `process.args` is ignored:
    /// the snapshot is the process.
    pub fn from_bundle(dir: &Path) -> Result<ContainerSpec, String> {
        let config = dir.join("config.json");
        let spec = Spec::load(&config).map_err(|e| format!("{}: {e}", config.display()))?;
        Self::from_oci(&spec, dir).map_err(|e| format!("{}: {e}", config.display()))
    }

    fn from_oci(spec: &Spec, dir: &Path) -> Result<ContainerSpec, String> {
        let mut c = ContainerSpec::default();
        let root = spec.root().as_ref().ok_or("no root")?;
        let path = root.path();
        c.rootfs = Some(if path.is_absolute() {
            path.clone()
        } else {
            dir.join(path)
        });
        c.readonly_root = root.readonly().unwrap_or(false);
        c.hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        if let Some(p) = spec.process() {
            let (uid, gid) = (p.user().uid(), p.user().gid());
            match (uid, gid) {
                (0, 0) => {}
                (0, _) | (_, 0) => return Err(format!("process.user {uid}:{gid}: a child runs as root or as a non-root uid and gid, not a mix")),
                (uid, gid) => c.user = Some(Identity { uid, gid }),
            }
        }
        if let Some(linux) = spec.linux() {
            let mut net_ns = false;
            for ns in linux.namespaces().iter().flatten() {
                if ns.path().is_some() {
                    return Err(format!(
                        "joining an existing {:?} namespace (linux.namespaces[].path) is not supported",
                        ns.typ()
                    ));
                }
                match ns.typ() {
                    LinuxNamespaceType::Network => net_ns = true,
                    LinuxNamespaceType::User => return Err(
                        "user namespaces are not supported: the child's identity is process.user"
                            .into(),
                    ),
                    // Always new: pid, mount, uts, ipc, cgroup, time.
                    _ => {}
                }
            }
            c.net = if net_ns { Net::None } else { Net::Host };
            if let Some(r) = linux.resources() {
                if let Some(m) = r.memory() {
                    c.limits.memory_max = positive(m.limit());
                }
                if let Some(cpu) = r.cpu() {
                    if let Some(q) = positive(cpu.quota()) {
                        c.limits.cpu = Some(CpuMax {
                            quota_us: q,
                            period_us: cpu.period().filter(|&p| p > 0).unwrap_or(100_000),
                        });
                    }
                }
                if let Some(p) = r.pids() {
                    c.limits.pids_max = positive(Some(p.limit()));
                }
            }
        }
        for m in spec.mounts().iter().flatten() {
            let options: Vec<&str> = m.options().iter().flatten().map(String::as_str).collect();
            let fstype = m.typ().clone().unwrap_or_default();
            let source = m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| fstype.clone());
            let dest = m.destination().to_string_lossy().into_owned();
            if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
                return Err(format!(
                    "mount destination {dest:?} is not an absolute path inside the root"
                ));
            }
            let mut spec = MountSpec::new(&dest, &fstype, &source, &options);
            if fstype == "bind" {
                spec.flags |= libc::MS_BIND;
                spec.fstype.clear();
            }
            c.mounts.push(spec);
        }
        Ok(c)
    }
}

/// An OCI limit: absent, zero or negative (`-1`) mean unlimited.
fn positive(v: Option<i64>) -> Option<u64> {
    v.filter(|&v| v > 0).map(|v| v as u64)
}

/// `--cpus 0.5` as `cpu.max` over the default 100 ms period.
pub fn parse_cpus(s: &str) -> Result<CpuMax, String> {
    let cpus: f64 = s
        .parse()
        .map_err(|_| format!("bad CPU count '{s}' (e.g. 0.5 or 2)"))?;
    if !(0.01..=1024.0).contains(&cpus) {
        return Err(format!("CPU count '{s}' out of range (0.01 to 1024)"));
    }
    let period_us = 100_000;
    Ok(CpuMax {
        quota_us: (cpus * period_us as f64).round() as u64,
        period_us,
    })
}

/// `--hostname`: what sethostname(2) and RFC 1123 accept.
pub fn parse_hostname(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "'{s}' is not a host name (letters, digits, '-', '.', at most 64)"
        ))
    }
}

pub fn parse_net(s: &str) -> Result<Net, String> {
    match s {
        "none" => Ok(Net::None),
        "host" => Ok(Net::Host),
        _ => Err(format!("--net is none or host, not '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 65534, "gid": 65534}, "args": ["python3"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "fn-box",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/data", "type": "bind", "source": "/srv/data",
             "options": ["rbind", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "resources": {"memory": {"limit": 268435456}, "cpu": {"quota": 50000, "period": 100000},
                          "pids": {"limit": 64}}
        }
    }"#;

    fn bundle(json: &str) -> Result<ContainerSpec, String> {
        let dir = std::env::temp_dir().join(format!(
            "mitosis-bundle-{}-{}",
            std::process::id(),
            json.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), json).unwrap();
        let r = ContainerSpec::from_bundle(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        r.map(|mut c| {
            // Relative to the temporary directory: compare the tail only.
            c.rootfs = c.rootfs.map(|p| PathBuf::from(p.file_name().unwrap()));
            c
        })
    }

    #[test]
    fn runtime_bundle_is_read() {
        let c = bundle(BUNDLE).unwrap();
        assert_eq!(c.rootfs, Some(PathBuf::from("rootfs")));
        assert!(c.readonly_root);
        assert_eq!(c.hostname.as_deref(), Some("fn-box"));
        assert_eq!(
            c.user,
            Some(Identity {
                uid: 65534,
                gid: 65534
            })
        );
        assert_eq!(c.net, Net::None);
        assert_eq!(
            c.limits,
            Limits {
                memory_max: Some(256 << 20),
                cpu: Some(CpuMax {
                    quota_us: 50_000,
                    period_us: 100_000
                }),
                pids_max: Some(64),
            }
        );
        assert_eq!(c.mounts.len(), 3);
        assert_eq!(c.mounts[0].fstype, "proc");
        let dev = &c.mounts[1];
        assert_eq!(dev.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(dev.data, "mode=755,size=65536k");
        let data = &c.mounts[2];
        assert!(data.is_bind());
        assert_eq!(data.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(data.source, "/srv/data");
        assert_eq!(data.fstype, "");
    }

    #[test]
    fn minimal_bundle_defaults() {
        let c = bundle(r#"{"ociVersion": "1.0.2", "root": {"path": "/abs/root"}}"#).unwrap();
        assert_eq!(c.rootfs, Some(PathBuf::from("root")));
        assert_eq!(c.net, Net::Host);
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.user, None);
        assert!(!c.readonly_root);
    }

    #[test]
    fn unsupported_bundles_are_refused_with_the_reason() {
        let user_ns = BUNDLE.replace(r#"{"type": "mount"}"#, r#"{"type": "user"}"#);
        assert!(bundle(&user_ns).unwrap_err().contains("user namespaces"));
        let join = BUNDLE.replace(
            r#"{"type": "ipc"}"#,
            r#"{"type": "ipc", "path": "/proc/1/ns/ipc"}"#,
        );
        assert!(bundle(&join).unwrap_err().contains("existing"));
        let escape = BUNDLE.replace("\"/data\"", "\"/../etc\"");
        assert!(bundle(&escape).unwrap_err().contains("inside the root"));
        let mixed = BUNDLE.replace(r#""gid": 65534"#, r#""gid": 0"#);
        assert!(bundle(&mixed).unwrap_err().contains("not a mix"));
        assert!(bundle("{not json").is_err());
        assert!(bundle(r#"{"ociVersion": "1.0.2"}"#)
            .unwrap_err()
            .contains("no root"));
        let unlimited = BUNDLE
            .replace("268435456", "-1")
            .replace(r#""limit": 64"#, r#""limit": 0"#);
        let c = bundle(&unlimited).unwrap();
        assert_eq!((c.limits.memory_max, c.limits.pids_max), (None, None));
    }

    #[test]
    fn flag_values() {
        assert_eq!(
            parse_cpus("0.5"),
            Ok(CpuMax {
                quota_us: 50_000,
                period_us: 100_000
            })
        );
        assert_eq!(parse_cpus("2").unwrap().quota_us, 200_000);
        for bad in ["0", "-1", "x", "5000", "nan"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_hostname("fn-1.local").as_deref(), Ok("fn-1.local"));
        for bad in ["", "-a", "a..b", "a b", &"x".repeat(65)] {
            assert!(parse_hostname(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_net("none"), Ok(Net::None));
        assert!(parse_net("bridge").is_err());
        let (f, d) = mount_options(&["ro", "rw", "nodev", "size=1m"]);
        assert_eq!((f, d.as_str()), (libc::MS_NODEV, "size=1m"));
    }
}
