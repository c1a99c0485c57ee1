//! Filters are tried in a child process (this test binary run again for one case), since
//! a violation ends the whole process.

use std::process::Command;

use super::*;

const CASE_ENV: &str = "HUSK_SECCOMP_TEST_CASE";

/// Runs case `case` in a fresh copy of this test binary; returns its exit code and stderr.
fn run_case(case: &str) -> (Option<i32>, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp::tests::case_runner",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CASE_ENV, case)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn install(role: ThreadRole) {
    let list = match role {
        ThreadRole::Vcpu => vcpu::allowlist(),
        ThreadRole::Device => device::allowlist(),
        // SAFETY: getpid has no preconditions.
        ThreadRole::Control => control::allowlist(unsafe { libc::getpid() }, libc::SIGRTMIN()),
    };
    let filter = RoleFilter::compile(role, &list).unwrap();
    install_violation_handler(libc::STDERR_FILENO, false).unwrap();
    filter.install().unwrap();
}

/// The child side: not run by itself (ignored), only by `run_case`.
#[test]
#[ignore = "run by the seccomp tests in a child process"]
fn case_runner() {
    let Ok(case) = std::env::var(CASE_ENV) else {
        return;
    };
    match case.as_str() {
        "vcpu-forbidden" => {
            install(ThreadRole::Vcpu);
            trigger_violation();
        }
        "device-forbidden" => {
            install(ThreadRole::Device);
            trigger_violation();
        }
        "control-forbidden-json" => {
            let list = control::allowlist(std::process::id() as i32, libc::SIGRTMIN());
            let filter = RoleFilter::compile(ThreadRole::Control, &list).unwrap();
            install_violation_handler(libc::STDERR_FILENO, true).unwrap();
            filter.install().unwrap();
            trigger_violation();
        }
        "vcpu-foreign-ioctl" => {
            install(ThreadRole::Vcpu);
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD on stdin writes one int into `n`.
            unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) };
        }
        "control-threads-and-sockets" => {
            let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
            install(ThreadRole::Control);
            let t = std::thread::Builder::new()
                .name("worker".into())
                .spawn(move || {
                    use std::io::Write;
                    (&a).write_all(b"ping").unwrap();
                })
                .unwrap();
            t.join().unwrap();
            let mut buf = [0u8; 4];
            std::io::Read::read_exact(&mut b, &mut buf).unwrap();
            assert_eq!(&buf, b"ping");
            // clone3 is refused quietly (ENOSYS) rather than trapped.
            // SAFETY: clone3 with a null argument fails before doing anything.
            let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
            assert_eq!(r, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::ENOSYS)
            );
            // SAFETY: _exit ends the process at once.
            unsafe { libc::_exit(0) };
        }
        "control-fork" => {
            install(ThreadRole::Control);
            // SAFETY: the child, if there were one, would only _exit.
            if unsafe { libc::fork() } == 0 {
                // SAFETY: _exit ends the child at once.
                unsafe { libc::_exit(0) };
            }
        }
        other => panic!("unknown case {other}"),
    }
    // Reached only if the filter let the forbidden call through.
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(3) };
}

#[test]
fn every_role_compiles() {
    for (role, list) in [
        (ThreadRole::Vcpu, vcpu::allowlist()),
        (ThreadRole::Device, device::allowlist()),
        (ThreadRole::Control, control::allowlist(1, libc::SIGRTMIN())),
    ] {
        assert!(!list.is_empty());
        RoleFilter::compile(role, &list).unwrap();
    }
}

#[test]
fn roles_are_narrower_than_control() {
    let vcpu = vcpu::allowlist();
    for nr in [
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_clone,
        libc::SYS_execve,
    ] {
        assert!(!vcpu.contains(nr), "vCPU threads may not make syscall {nr}");
    }
    let control = control::allowlist(1, libc::SIGRTMIN());
    for nr in [
        libc::SYS_execve,
        libc::SYS_openat,
        libc::SYS_mount,
        libc::SYS_ptrace,
        libc::SYS_setuid,
        libc::SYS_kill,
    ] {
        assert!(
            !control.contains(nr),
            "control threads may not make syscall {nr}"
        );
    }
}

#[test]
fn a_forbidden_call_ends_the_process_with_a_record_naming_role_and_call() {
    for (case, role) in [("vcpu-forbidden", "vCPU"), ("device-forbidden", "device")] {
        let (code, stderr) = run_case(case);
        assert_eq!(code, Some(VIOLATION_EXIT_CODE), "{case}: {stderr}");
        // The thread's name follows the role, in parentheses.
        let head = format!("husk: seccomp: the {role} thread (");
        let tail = format!(
            ") made the forbidden system call {}; the sandbox ends",
            libc::SYS_sysinfo
        );
        assert!(
            stderr.contains(&head) && stderr.contains(&tail),
            "{case}: {stderr}"
        );
    }
}

#[test]
fn the_record_can_be_a_runc_json_error_line() {
    let (code, stderr) = run_case("control-forbidden-json");
    assert_eq!(code, Some(VIOLATION_EXIT_CODE), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line: {stderr}"));
    let v: serde_json_lite::Value = serde_json_lite::parse(line);
    assert_eq!(v.level, "error");
    assert!(v.msg.contains("control thread"), "{line}");
}

#[test]
fn vcpu_threads_may_only_make_their_own_ioctls() {
    let (code, stderr) = run_case("vcpu-foreign-ioctl");
    assert_eq!(code, Some(VIOLATION_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains(&format!("system call {}", libc::SYS_ioctl)),
        "{stderr}"
    );
}

#[test]
fn control_threads_start_threads_and_use_sockets_but_never_fork() {
    let (code, stderr) = run_case("control-threads-and-sockets");
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = run_case("control-fork");
    assert_eq!(code, Some(VIOLATION_EXIT_CODE), "{stderr}");
    assert!(
        stderr.contains(&format!("system call {}", libc::SYS_clone)),
        "{stderr}"
    );
}

#[test]
fn violation_lines_fit_and_name_unknown_roles() {
    let l = violation_line(0, b"", i64::from(u32::MAX), false);
    let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
    assert_eq!(
        s,
        "husk: seccomp: the unconfined thread made the forbidden system call 4294967295; the sandbox ends\n"
    );
    let l = violation_line(3, b"agent-reader\0\0\0\0", 257, false);
    let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
    assert_eq!(
        s,
        "husk: seccomp: the control thread (agent-reader) made the forbidden system call 257; the sandbox ends\n"
    );
}

/// Just enough JSON for the record line (the VMM crate does not depend on serde_json).
mod serde_json_lite {
    pub struct Value {
        pub level: String,
        pub msg: String,
    }

    fn field(line: &str, key: &str) -> String {
        let pat = format!("\"{key}\":\"");
        let start = line.find(&pat).map(|i| i + pat.len()).unwrap_or(0);
        let end = line[start..].find('"').map_or(line.len(), |e| start + e);
        line[start..end].to_string()
    }

    pub fn parse(line: &str) -> Value {
        assert!(line.ends_with('}'), "{line}");
        Value {
            level: field(line, "level"),
            msg: field(line, "msg"),
        }
    }
}
