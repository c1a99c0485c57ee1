//! `husk features`: what husk understands in config.json, in the layout of
//! `runc features` (runtime-spec features-linux.md).
//!
//! The Linux features are those of the container inside the guest (namespaces,
//! capabilities, seccomp are applied by the guest agent under the guest kernel). Every
//! hook phase runs (startContainer inside the guest; see `husk_runtime::hooks`).

use anyhow::{Context, Result};
use liboci_cli::Features;
use oci_spec::runtime::Features as OciFeatures;
use serde_json::json;

use husk_protocol::CAPABILITIES;

use husk_runtime::Globals;

/// The features document.
pub fn features() -> Result<OciFeatures> {
    let doc = json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": husk_runtime::state::record::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "mand", "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime",
            "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro",
            "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "slave",
            "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "capabilities": CAPABILITIES.as_slice(),
            "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                            "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                            "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                              "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.github.husk.version": env!("CARGO_PKG_VERSION"),
            "io.github.husk.isolation": "kvm-microvm",
            "io.github.husk.bind-mounts": "directories and regular files, live, over virtio-fs (not sockets, devices or FIFOs)",
            "io.github.husk.network": "the network namespace's Ethernet interfaces, carried into the VM; no host network",
            "io.github.husk.sandbox.seccomp": "per thread role: vcpu, device, control; violation ends the sandbox (exit 159)",
            "io.github.husk.sandbox.no-new-privs": "true",
            "io.github.husk.sandbox.namespaces": "mount,ipc,uts,cgroup (network: the container's)",
            "io.github.husk.sandbox.rlimits": "nofile=1048576,core=0",
            "io.github.husk.sandbox.capabilities": "all dropped but what its devices declare: with virtio-fs (every container) CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_SETUID, CAP_SETGID for the file server",
            "io.github.husk.sandbox.jail": "pivot_root into <state>/sandbox (console log, sockets), nosuid,nodev,noexec; images, shares and taps opened before",
            "io.github.husk.sandbox.user": "uid 0 while it serves virtio-fs (files are created as the guest's users, as virtiofsd does), else uid and gid 0x70000000 + sandbox pid where husk runs as root in the initial user namespace, else its own uid",
            "io.github.husk.sandbox.cgroup": "linux.cgroupsPath (cgroupfs or systemd, v1 and v2): the whole VM, memory limit = guest memory + 128 MiB"
        }
    });
    serde_json::from_value(doc).context("building the features document")
}

/// `husk features`.
pub fn run(_g: &Globals, _args: Features) -> Result<i32> {
    println!("{}", serde_json::to_string_pretty(&features()?)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_document_has_runc_keys() {
        let v = serde_json::to_value(features().unwrap()).unwrap();
        assert_eq!(v["ociVersionMin"], "1.0.0");
        assert!(v["linux"]["namespaces"].as_array().unwrap().len() >= 6);
        assert_eq!(v["linux"]["seccomp"]["enabled"], true);
        let sandbox_seccomp = &v["annotations"]["io.github.husk.sandbox.seccomp"];
        assert!(sandbox_seccomp.as_str().unwrap().contains("vcpu"));
        let a = &v["annotations"];
        assert!(a["io.github.husk.sandbox.capabilities"]
            .as_str()
            .unwrap()
            .starts_with("all dropped"));
        assert!(a["io.github.husk.sandbox.jail"]
            .as_str()
            .unwrap()
            .contains("pivot_root"));
        assert!(a["io.github.husk.sandbox.cgroup"]
            .as_str()
            .unwrap()
            .contains("cgroupsPath"));
        assert!(v["mountOptions"]
            .as_array()
            .unwrap()
            .contains(&"rbind".into()));
    }
}
