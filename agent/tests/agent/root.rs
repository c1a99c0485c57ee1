//! Execs with a root disk: a real ext4 image on a loop device, mounted by the agent in a
//! mount namespace of its own. Needs root, loop devices, busybox and unshare (CI and the
//! development machines have them); where any is missing the tests fail and say which.

use husk_protocol::{ExecRequest, ExitStatus, Request, Response, RootDisk, StdioSpec};

use crate::support::disk::{busybox_root_device, require_root};
use crate::support::{read_all, TestAgent};

fn exec_in_root(exec_id: &str, script: &str, port: u32, root: RootDisk) -> Request {
    Request::Exec(ExecRequest {
        exec_id: exec_id.into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        root: Some(root),
        stdio: StdioSpec {
            port,
            stdin: false,
            stdout: true,
            stderr: false,
            terminal: false,
        },
        container_id: None,
        process: None,
    })
}

#[test]
fn process_runs_chrooted_in_its_read_only_root_disk_with_proc_dev_and_tmp() {
    let disk = busybox_root_device();
    let mut agent = TestAgent::start_in_own_mount_namespace();
    let mut client = agent.client();
    let root = RootDisk {
        device: disk.device.clone(),
        fstype: "ext4".into(),
        readonly: true,
    };
    let script = "cat /hello.txt; \
        test -d /proc/self && test -c /dev/null && echo system-mounts; \
        echo scratch > /tmp/t && cat /tmp/t; \
        touch /new-file 2>/dev/null || echo read-only";
    for exec_id in ["first", "second (same mount, reused)"] {
        let listener = agent.stdio_listener();
        let response = client.request(exec_in_root(exec_id, script, listener.port, root.clone()));
        assert!(matches!(response, Response::Started { .. }), "{response:?}");
        let stdio = StdioSpec {
            port: listener.port,
            stdout: true,
            ..StdioSpec::default()
        };
        let mut streams = listener.accept_streams(exec_id, &stdio);
        let stdout = read_all(streams.remove(&husk_protocol::StreamKind::Stdout).unwrap());
        assert_eq!(
            String::from_utf8_lossy(&stdout),
            "hello from the root disk\nsystem-mounts\nscratch\nread-only\n"
        );
        assert_eq!(client.exit_status(exec_id), ExitStatus::Code(0));
    }

    // The device is mounted read-only already; it is not silently reused read-write.
    let rw = RootDisk {
        readonly: false,
        ..root
    };
    let response = client.request(exec_in_root("rw", "true", 1, rw));
    assert!(
        matches!(&response, Response::Error { message } if message.contains("already mounted")),
        "{response:?}"
    );
    assert_eq!(client.request(Request::Shutdown), Response::Ok);
    assert!(agent
        .wait_exit(std::time::Duration::from_secs(10))
        .success());
}

#[test]
fn a_root_that_cannot_be_mounted_is_an_error_naming_the_device() {
    require_root();
    let agent = TestAgent::start_in_own_mount_namespace();
    let mut client = agent.client();
    let root = RootDisk {
        device: "/dev/null".into(),
        fstype: "ext4".into(),
        readonly: true,
    };
    let response = client.request(exec_in_root("bad", "true", 1, root));
    assert!(
        matches!(&response, Response::Error { message } if message.contains("mount /dev/null")),
        "{response:?}"
    );
}
