//! Bad input: each gets one clear error line (and a runc-style JSON error line in the
//! log), exit status 1, and nothing left behind. None of these needs the guest agent to
//! create containers.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{show, unique_id, Bundle, Env};

#[test]
fn unknown_container_is_a_clear_error_for_every_command() {
    let env = Env::new();
    let id = unique_id("ghost");
    for cmd in [
        vec!["state", &id],
        vec!["start", &id],
        vec!["kill", &id, "KILL"],
        vec!["delete", &id],
        vec!["pause", &id],
        vec!["resume", &id],
        vec!["ps", &id],
        vec!["exec", &id, "true"],
    ] {
        env.fails(&cmd, "does not exist");
        let line = env.last_error_line().expect("a JSON error line in the log");
        assert!(
            line["msg"].as_str().unwrap().contains("does not exist"),
            "{cmd:?}: {line}"
        );
        assert!(line["time"].as_str().is_some());
    }
    // As with runc, forcing the deletion of nothing is not an error.
    env.ok(["delete", "--force", &id]);
}

#[test]
fn invalid_ids_are_refused() {
    let env = Env::new();
    let bundle = Bundle::new(&["true"]);
    for id in ["a/b", "..", "a b", "x:y"] {
        env.fails(
            ["create", "--bundle", &bundle.path_str(), id],
            "invalid container id",
        );
        env.fails(["state", id], "invalid container id");
    }
    assert_eq!(
        std::fs::read_dir(env.root())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "log.json")
            .count(),
        0
    );
}

#[test]
fn unknown_signal_name_is_refused() {
    let env = Env::new();
    env.fails(["kill", "whatever", "SIGNOPE"], "unknown signal");
    env.fails(["kill", "whatever", "999"], "invalid signal");
    let line = env.last_error_line().unwrap();
    assert_eq!(line["level"], "error");
}

/// Creates with a broken bundle and checks the failure is clean.
pub fn assert_create_fails_cleanly(env: &Env, bundle: &Bundle, needle: &str) {
    let id = unique_id("bad");
    let pid_file = env.root().join("pid");
    let o = env.fails(
        [
            "create",
            "--bundle",
            &bundle.path_str(),
            "--pid-file",
            &pid_file.display().to_string(),
            &id,
        ],
        needle,
    );
    let line = env.last_error_line().expect("a JSON error line in the log");
    assert!(
        line["msg"].as_str().unwrap().contains(needle),
        "log line {line} should mention {needle:?}: {}",
        show(&o)
    );
    assert!(!pid_file.exists(), "no pid file after a failed create");
    env.assert_nothing_left(&id);
}

#[test]
fn missing_or_malformed_config_json_fails_cleanly() {
    let env = Env::new();
    let bundle = Bundle::new(&["true"]);
    std::fs::remove_file(bundle.path().join("config.json")).unwrap();
    assert_create_fails_cleanly(&env, &bundle, "config.json not found");
    std::fs::write(bundle.path().join("config.json"), "{\"ociVersion\": ").unwrap();
    assert_create_fails_cleanly(&env, &bundle, "not valid JSON");
    let mut b = Bundle::new(&["true"]);
    b.config["process"] = json!({"cwd": "/", "user": {"uid": 0, "gid": 0}});
    b.save();
    assert_create_fails_cleanly(&env, &b, "process.args");
}

#[test]
fn missing_rootfs_fails_cleanly() {
    let env = Env::new();
    let bundle = Bundle::new(&["true"]);
    std::fs::remove_dir_all(bundle.path().join("rootfs")).unwrap();
    assert_create_fails_cleanly(&env, &bundle, "rootfs");
}

#[test]
fn bind_sources_that_cannot_be_shared_fail_create_naming_them() {
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let sock = host.path().join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let ro = host.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let ro_mount = ReadOnlyBind::new(&ro);
    let missing = host.path().join("missing");
    for (source, options, needle) in [
        (missing.clone(), json!(["rbind"]), "does not exist"),
        (sock.clone(), json!(["rbind"]), "unix socket"),
        (
            std::path::PathBuf::from("/dev/null"),
            json!(["bind"]),
            "device node",
        ),
        (ro.clone(), json!(["rbind", "rw"]), "read-only file system"),
    ] {
        let mut bundle = Bundle::new(&["true"]);
        bundle.config["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/data", "type": "bind",
                         "source": source, "options": options}));
        bundle.save();
        assert_create_fails_cleanly(&env, &bundle, needle);
        let e = String::from_utf8_lossy(&std::fs::read(env.root().join("log.json")).unwrap())
            .into_owned();
        assert!(e.contains(&source.display().to_string()), "{e}");
    }
    drop(ro_mount);
}

#[test]
fn a_file_bound_where_the_root_has_a_directory_fails_create_cleanly() {
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let mut bundle = Bundle::new(&["true"]);
    // /etc is a directory in the bundle's root.
    bundle.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/etc", "type": "bind", "source": file, "options": ["bind"]}));
    bundle.save();
    assert_create_fails_cleanly(&env, &bundle, "/etc");
}

#[test]
fn a_share_swapped_during_create_is_never_mounted_as_something_else() {
    // A thread flips the source between a directory and a socket while creates run: each
    // create either shares the directory or refuses the socket, and leaves nothing.
    let env = Env::new();
    let host = tempfile::tempdir().unwrap();
    let (dir, sock, link) = (
        host.path().join("dir"),
        host.path().join("sock"),
        host.path().join("src"),
    );
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("marker"), "the directory\n").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, dir, sock, link) = (stop.clone(), dir.clone(), sock.clone(), link.clone());
        let tmp = link.with_extension("tmp");
        std::thread::spawn(move || {
            let mut to_dir = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(if to_dir { &dir } else { &sock }, &tmp).unwrap();
                std::fs::rename(&tmp, &link).unwrap();
                to_dir = !to_dir;
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };
    let mut bundle = Bundle::new(&["cat", "/data/marker"]);
    bundle.config["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/data", "type": "bind", "source": link, "options": ["rbind"]}),
    );
    bundle.save();
    let (mut created, mut refused) = (0, 0);
    for i in 0..6 {
        let id = unique_id(&format!("swap{i}"));
        // A created container's sandbox keeps create's stdio: files, not pipes.
        let err_file = host.path().join(format!("create-{i}.err"));
        let mut c = env.husk();
        c.args(["create", "--bundle", &bundle.path_str(), &id])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_file).unwrap());
        let status = crate::support::output_within_status(&mut c, Duration::from_secs(120));
        if status.success() {
            created += 1;
            env.ok(["delete", "--force", &id]);
        } else {
            refused += 1;
            let err = std::fs::read_to_string(&err_file).unwrap();
            assert!(
                err.contains("unix socket") || err.contains("changed"),
                "{err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
        env.assert_nothing_left(&id);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(created + refused, 6);
}

/// A read-only bind of a directory onto itself, undone when dropped.
struct ReadOnlyBind(std::path::PathBuf);

impl ReadOnlyBind {
    fn new(dir: &std::path::Path) -> Self {
        use nix::mount::{mount, MsFlags};
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
        Self(dir.to_owned())
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn terminal_without_console_socket_and_the_reverse_are_refused() {
    let env = Env::new();
    let mut bundle = Bundle::new(&["sh"]);
    bundle.config["process"]["terminal"] = json!(true);
    bundle.save();
    assert_create_fails_cleanly(&env, &bundle, "--console-socket");
    let bundle = Bundle::new(&["sh"]);
    let id = unique_id("console");
    env.fails(
        [
            "create",
            "--bundle",
            &bundle.path_str(),
            "--console-socket",
            "/tmp/nope.sock",
            &id,
        ],
        "terminal",
    );
    env.assert_nothing_left(&id);
}

#[test]
fn preserve_fds_is_refused() {
    let env = Env::new();
    let bundle = Bundle::new(&["true"]);
    let id = unique_id("fds");
    env.fails(
        [
            "create",
            "--bundle",
            &bundle.path_str(),
            "--preserve-fds",
            "2",
            &id,
        ],
        "preserve-fds",
    );
    env.assert_nothing_left(&id);
}

#[test]
fn a_guest_that_never_answers_fails_create_and_is_torn_down() {
    let env = Env::new();
    let bundle = Bundle::new(&["true"]);
    let id = unique_id("deadagent");
    let mut c = env.husk();
    c.env("HUSK_AGENT_BIN", "/bin/false")
        .args(["create", "--bundle", &bundle.path_str(), &id]);
    let o = crate::support::output_within(&mut c, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("agent"),
        "{}",
        show(&o)
    );
    env.assert_nothing_left(&id);
}

#[test]
fn missing_guest_kernel_is_a_clear_error_with_the_vm_backend() {
    let env = Env::new();
    let bundle = Bundle::new(&["true"]);
    let id = unique_id("nokernel");
    let mut c = env.husk();
    c.env("HUSK_SANDBOX_BACKEND", "vm")
        .env("HUSK_KERNEL", "/nonexistent/vmlinux")
        .args(["create", "--bundle", &bundle.path_str(), &id]);
    let o = crate::support::output_within(&mut c, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/vmlinux"),
        "{}",
        show(&o)
    );
    env.assert_nothing_left(&id);
}

#[test]
fn duplicate_id_is_refused_while_the_first_is_being_created() {
    let env = Env::new();
    let bundle = Bundle::new(&["true"]);
    let id = unique_id("dup");
    // An "agent" that never listens keeps the first create in `creating`.
    let stall = env.root().join("stall-agent");
    std::fs::write(&stall, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&stall, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut first = env.husk();
    first
        .env("HUSK_AGENT_BIN", &stall)
        .env("HUSK_BOOT_TIMEOUT", "5")
        .args(["create", "--bundle", &bundle.path_str(), &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let first = first.spawn().unwrap();
    let state_file = env.root().join(&id).join("state.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state_file.exists() {
        assert!(
            Instant::now() < deadline,
            "the first create never wrote its state"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(env.status(&id), "creating");
    env.fails(
        ["create", "--bundle", &bundle.path_str(), &id],
        "already exists",
    );
    let o = first.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not answer"),
        "{}",
        show(&o)
    );
    env.assert_nothing_left(&id);
}
