//! config.json honoured inside the container: process settings, privileges, mounts,
//! masked and read-only paths, namespaces and seccomp.

use std::io::Write;

use husk_protocol::ExitStatus;
use serde_json::json;

use crate::support::container::{docker_default_seccomp, spec, ContainerHost, DEFAULT_CAPS};
use crate::support::read_until;

#[test]
fn the_process_gets_its_env_cwd_user_groups_umask_and_hostname() {
    let mut host = ContainerHost::new();
    let mut s = spec(&[
        "sh",
        "-c",
        "id; umask; hostname; pwd; echo $FOO; echo $HOME",
    ]);
    s["process"]["user"] =
        json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 20], "umask": 0o027});
    s["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    s["process"]["cwd"] = json!("/home/tester");
    s["hostname"] = json!("husk-box");
    let ran = host.run("u", &s);
    assert_eq!(
        ran.stdout,
        "uid=1000(tester) gid=1000 groups=10,20\n0027\nhusk-box\n/home/tester\nbar baz\n/home/tester\n",
        "stderr: {}",
        ran.stderr
    );
    assert_eq!(ran.status, ExitStatus::Code(0));
}

#[test]
fn rlimits_apply_to_the_process() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["sh", "-c", "ulimit -n; ulimit -Hn"]);
    s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
    assert_eq!(host.run("l", &s).stdout, "123\n456\n");
}

#[test]
fn all_five_capability_sets_are_as_configured() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["grep", "^Cap", "/proc/self/status"]);
    // A non-root user: after execve only what the ambient set carries stays permitted
    // and effective, so each set shows distinctly.
    s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    s["process"]["capabilities"] = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_NET_BIND_SERVICE"],
        "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
    });
    let ran = host.run("caps", &s);
    assert_eq!(
        ran.stdout,
        "CapInh:\t0000000000000421\n\
         CapPrm:\t0000000000000420\n\
         CapEff:\t0000000000000420\n\
         CapBnd:\t00000000000004a1\n\
         CapAmb:\t0000000000000420\n",
        "stderr: {}",
        ran.stderr
    );
}

#[test]
fn root_keeps_exactly_the_bounding_set() {
    let mut host = ContainerHost::new();
    let ran = host.run("rootcaps", &spec(&["grep", "^CapEff", "/proc/self/status"]));
    let expected: u64 = DEFAULT_CAPS.iter().map(|c| 1u64 << cap_number(c)).sum();
    assert_eq!(ran.stdout, format!("CapEff:\t{expected:016x}\n"));
}

fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_CHOWN" => 0,
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_FOWNER" => 3,
        "CAP_FSETID" => 4,
        "CAP_KILL" => 5,
        "CAP_SETGID" => 6,
        "CAP_SETUID" => 7,
        "CAP_SETPCAP" => 8,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_CHROOT" => 18,
        "CAP_MKNOD" => 27,
        "CAP_AUDIT_WRITE" => 29,
        "CAP_SETFCAP" => 31,
        other => panic!("{other}"),
    }
}

#[test]
fn no_new_privileges_is_set_when_asked_and_only_then() {
    let mut host = ContainerHost::new();
    let s = spec(&["grep", "NoNewPrivs", "/proc/self/status"]);
    assert_eq!(host.run("nnp", &s).stdout, "NoNewPrivs:\t1\n");
    let mut s = s;
    s["process"]["noNewPrivileges"] = json!(false);
    assert_eq!(host.run("nnp-off", &s).stdout, "NoNewPrivs:\t0\n");
}

#[test]
fn a_read_only_root_refuses_writes_but_tmpfs_mounts_take_them() {
    let mut host = ContainerHost::new();
    let mut s = spec(&[
        "sh",
        "-c",
        "touch /x 2>/dev/null || echo root-read-only; touch /tmp/x && echo tmp-writable",
    ]);
    s["root"]["readonly"] = json!(true);
    let ran = host.run("ro", &s);
    assert_eq!(
        ran.stdout, "root-read-only\ntmp-writable\n",
        "{}",
        ran.stderr
    );
}

#[test]
fn masked_paths_are_empty_and_readonly_paths_refuse_writes() {
    let mut host = ContainerHost::new();
    let mut s = spec(&[
        "sh",
        "-c",
        "ls /secret | wc -l; wc -c < /hello.txt; wc -c < /proc/timer_list; \
         touch /etc/x 2>/dev/null || echo etc-read-only; touch /y && echo root-writable",
    ]);
    s["linux"]["maskedPaths"] = json!(["/secret", "/hello.txt", "/proc/timer_list", "/no/such"]);
    s["linux"]["readonlyPaths"] = json!(["/etc", "/proc/sys", "/no/such"]);
    let ran = host.run("masked", &s);
    assert_eq!(
        ran.stdout, "0\n0\n0\netc-read-only\nroot-writable\n",
        "stderr: {}",
        ran.stderr
    );
}

#[test]
fn tmpfs_and_bind_mounted_files_appear() {
    let mut host = ContainerHost::new();
    let mut greeting = tempfile::NamedTempFile::new().unwrap();
    greeting.write_all(b"hi from the host\n").unwrap();
    let mut s = spec(&[
        "sh",
        "-c",
        "cat /etc/greeting; (echo x > /etc/greeting) 2>/dev/null || echo greeting-read-only; \
         echo data > /scratch/f && cat /scratch/f; grep ' /scratch ' /proc/mounts | cut -d' ' -f3",
    ]);
    let mounts = s["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/etc/greeting", "type": "bind",
                       "source": greeting.path(), "options": ["rbind", "ro"]}));
    mounts.push(
        json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                       "options": ["size=1m", "mode=1777"]}),
    );
    let ran = host.run("mounts", &s);
    assert_eq!(
        ran.stdout, "hi from the host\ngreeting-read-only\ndata\ntmpfs\n",
        "stderr: {}",
        ran.stderr
    );
}

#[test]
fn a_missing_bind_source_fails_create_naming_it() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["true"]);
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": "/nonexistent/husk/data",
        "options": ["rbind"]
    }));
    let Err(message) = host.create("nobind", &s) else {
        panic!("create succeeded");
    };
    assert!(message.contains("/nonexistent/husk/data"), "{message}");
    assert!(!host.has_mounts_of("nobind"));
}

#[test]
fn without_pivot_root_the_container_sees_the_same_mounts_as_with_it() {
    let script = "cat /hello.txt; cut -d' ' -f5 /proc/self/mountinfo | sort | tr '\\n' ' '";
    let with = ContainerHost::new().run("pivot", &spec(&["sh", "-c", script]));
    let mut host = ContainerHost::with_agent_args(&["--no-pivot"]);
    let without = host.run("nopivot", &spec(&["sh", "-c", script]));
    assert!(
        with.stdout.starts_with("hello from the root disk\n/ /dev "),
        "{}",
        with.stdout
    );
    assert_eq!(without.stdout, with.stdout, "stderr: {}", without.stderr);
}

#[test]
fn resources_go_to_the_containers_cgroup_or_are_skipped_without_their_controller() {
    let mut host = ContainerHost::new();
    let mut s = spec(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/pids.max 2>/dev/null || echo none",
    ]);
    s["linux"]["resources"] = json!({"pids": {"limit": 20}});
    let ran = host.run("res", &s);
    let root = host
        .agent
        .cgroup_root()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap();
    if controllers.split_whitespace().any(|c| c == "pids") {
        assert_eq!(ran.stdout, "20\n");
    } else {
        assert_eq!(ran.stdout, "none\n");
        assert!(
            host.agent.log().contains("pids.max = 20 not applied"),
            "{}",
            host.agent.log()
        );
    }
    assert_eq!(ran.status, ExitStatus::Code(0));
}

#[test]
fn dev_has_the_default_devices_the_configured_ones_and_the_usual_links() {
    let mut host = ContainerHost::new();
    let mut s = spec(&[
        "sh",
        "-c",
        "for d in null zero full random urandom tty; do test -c /dev/$d && echo -n \"$d \"; done; echo; \
         stat -c '%t,%T %a' /dev/mydev; for l in fd stdin stderr ptmx; do readlink /dev/$l; done; \
         echo x > /dev/null && head -c 3 /dev/zero | wc -c",
    ]);
    s["linux"]["devices"] = json!([{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 3,
                                    "fileMode": 0o600, "uid": 0, "gid": 0}]);
    let ran = host.run("dev", &s);
    assert_eq!(
        ran.stdout,
        "null zero full random urandom tty \n1,3 600\n/proc/self/fd\n/proc/self/fd/0\n\
         /proc/self/fd/2\npts/ptmx\n3\n",
        "stderr: {}",
        ran.stderr
    );
}

#[test]
fn sysctls_and_oom_score_adj_are_set() {
    let mut host = ContainerHost::new();
    let mut s = spec(&[
        "sh",
        "-c",
        "cat /proc/sys/kernel/msgmax /proc/self/oom_score_adj",
    ]);
    // An IPC-namespaced sysctl: the container has its own IPC namespace, so the test
    // host's value is untouched.
    s["linux"]["sysctl"] = json!({"kernel.msgmax": "4321"});
    s["process"]["oomScoreAdj"] = json!(500);
    let ran = host.run("sysctl", &s);
    assert_eq!(ran.stdout, "4321\n500\n", "stderr: {}", ran.stderr);
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/msgmax")
            .unwrap()
            .trim(),
        "4321"
    );
}

#[test]
fn the_process_is_pid_1_of_its_own_pid_namespace() {
    let mut host = ContainerHost::new();
    let ran = host.run("pidns", &spec(&["sh", "-c", "echo $$"]));
    assert_eq!(ran.stdout, "1\n", "stderr: {}", ran.stderr);
}

#[test]
fn a_domainname_needs_and_gets_a_uts_namespace() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["cat", "/proc/sys/kernel/domainname"]);
    s["domainname"] = json!("example.test");
    assert_eq!(host.run("dom", &s).stdout, "example.test\n");
    s["linux"]["namespaces"] = json!([{"type": "mount"}]);
    let Err(message) = host.create("dom2", &s) else {
        panic!("create without a uts namespace succeeded");
    };
    assert!(message.contains("uts namespace"), "{message}");
}

#[test]
fn a_seccomp_profile_that_denies_mkdir_makes_it_fail_with_eperm() {
    let mut host = ContainerHost::new();
    let mut s = spec(&[
        "sh",
        "-c",
        "mkdir /tmp/d 2>&1; echo status $?; touch /tmp/f && echo touched",
    ]);
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    });
    let ran = host.run("nomkdir", &s);
    assert!(
        ran.stdout.contains("Operation not permitted")
            && ran.stdout.contains("status 1\ntouched\n"),
        "{}",
        ran.stdout
    );
}

#[test]
fn dockers_default_profile_lets_a_shell_run_with_and_without_no_new_privileges() {
    let mut host = ContainerHost::new();
    let mut s = spec(&["sh", "-c", "echo ok; grep '^Seccomp:' /proc/self/status"]);
    s["linux"]["seccomp"] = docker_default_seccomp(&DEFAULT_CAPS);
    assert!(
        s["linux"]["seccomp"]["syscalls"][0]["names"]
            .as_array()
            .unwrap()
            .len()
            > 300
    );
    for (id, nnp) in [("docker-nnp", true), ("docker", false)] {
        s["process"]["noNewPrivileges"] = json!(nnp);
        let ran = host.run(id, &s);
        assert_eq!(ran.stdout, "ok\nSeccomp:\t2\n", "{id}: {}", ran.stderr);
        assert_eq!(ran.status, ExitStatus::Code(0));
    }
}

#[test]
fn dockers_default_profile_refuses_what_it_leaves_out() {
    let mut host = ContainerHost::new();
    // Root with CAP_SYS_ADMIN may mount; the profile, made for the default caps, does
    // not let it.
    let mut s = spec(&[
        "sh",
        "-c",
        "mkdir -p /m; mount -t tmpfs none /m 2>/dev/null && echo mounted || echo refused",
    ]);
    let mut caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    caps.push("CAP_SYS_ADMIN");
    s["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    assert_eq!(host.run("admin", &s).stdout, "mounted\n");
    s["linux"]["seccomp"] = docker_default_seccomp(&DEFAULT_CAPS);
    assert_eq!(host.run("admin-seccomp", &s).stdout, "refused\n");
}

#[test]
fn a_user_namespace_maps_the_containers_root_and_execs_join_it() {
    let mut host = ContainerHost::new();
    let mut s = spec(&[
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map /proc/self/gid_map; echo $$; \
         touch /tmp/t && echo tmp-ok; exec sleep 100",
    ]);
    s["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let mut created = host.create("userns", &s).unwrap_or_else(|e| panic!("{e}"));
    let status = std::fs::read_to_string(format!("/proc/{}/status", created.pid)).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.contains("100000"),
        "seen from the host: {uid_line}"
    );
    host.start("userns");
    let out = read_until(&mut created.stdout, "tmp-ok\n");
    let out: Vec<String> = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        out,
        ["0", "0 100000 65536", "0 100000 65536", "1", "tmp-ok"]
    );
    let exec = host
        .exec(
            "userns-1",
            "userns",
            &["sh", "-c", "id -u; head -1 /proc/self/uid_map"],
            None,
        )
        .unwrap();
    let (stdout, stderr) = exec.output();
    let stdout = String::from_utf8_lossy(&stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "0", "100000", "65536"],
        "stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
}
