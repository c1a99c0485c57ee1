//! A config.json mount's `options`, split the way mount(2) wants them: flags, propagation
//! changes (each its own call) and the filesystem's data string.

use nix::mount::MsFlags;

/// Parsed options of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2) (for a bind mount: besides MS_BIND/MS_REC, the flags of the
    /// remount that follows it).
    pub flags: MsFlags,
    /// `bind` or `rbind` was given.
    pub bind: bool,
    /// `rbind`: the bind takes submounts along.
    pub recursive: bool,
    /// Propagation changes (`rprivate`, `slave`, ...), in order.
    pub propagation: Vec<MsFlags>,
    /// Everything else, for the filesystem (`mode=755`, `size=64k`, `newinstance`, ...).
    pub data: Vec<String>,
}

impl MountOptions {
    /// The data string, or `None` when there is none.
    pub fn data(&self) -> Option<String> {
        (!self.data.is_empty()).then(|| self.data.join(","))
    }
}

/// Options that set (`true`) or clear (`false`) a flag.
fn flag(option: &str) -> Option<(bool, MsFlags)> {
    Some(match option {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "mand" => (true, MsFlags::MS_MANDLOCK),
        "nomand" => (false, MsFlags::MS_MANDLOCK),
        "atime" => (false, MsFlags::MS_NOATIME),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        "lazytime" => (true, MsFlags::MS_LAZYTIME),
        "nolazytime" => (false, MsFlags::MS_LAZYTIME),
        "silent" => (true, MsFlags::MS_SILENT),
        "loud" => (false, MsFlags::MS_SILENT),
        "acl" => (true, MsFlags::MS_POSIXACL),
        "noacl" => (false, MsFlags::MS_POSIXACL),
        "iversion" => (true, MsFlags::MS_I_VERSION),
        "noiversion" => (false, MsFlags::MS_I_VERSION),
        // Recursive read-only needs mount_setattr; plain read-only is the closest.
        "rro" => (true, MsFlags::MS_RDONLY),
        "defaults" => (true, MsFlags::empty()),
        _ => return None,
    })
}

fn propagation(option: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match option {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

/// Parses `options` in order; a later option overrides an earlier one (`ro` then `rw`).
pub fn parse(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        bind: false,
        recursive: false,
        propagation: Vec::new(),
        data: Vec::new(),
    };
    for option in options {
        let option = option.as_str();
        if let Some((set, f)) = flag(option) {
            out.flags.set(f, set);
        } else if let Some(p) = propagation(option) {
            out.propagation.push(p);
        } else if option == "bind" {
            out.bind = true;
        } else if option == "rbind" {
            out.bind = true;
            out.recursive = true;
        } else if option == "tmpcopyup" {
            // runc's copy of the image's files into a tmpfs; the images here have none
            // under tmpfs mounts worth keeping.
        } else {
            out.data.push(option.to_owned());
        }
    }
    out
}

/// Parses `rootfsPropagation`.
pub fn root_propagation(value: &str) -> Option<MsFlags> {
    propagation(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn docker_dev_tmpfs_options_split_into_flags_and_data() {
        let o = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data().as_deref(), Some("mode=755,size=65536k"));
        assert!(!o.bind);
    }

    #[test]
    fn rbind_with_propagation_and_ro() {
        let o = opts(&["rbind", "rprivate", "ro"]);
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, [MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(o.data(), None);
    }

    #[test]
    fn later_options_override_earlier_ones() {
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
        assert_eq!(opts(&["exec", "noexec"]).flags, MsFlags::MS_NOEXEC);
    }
}
