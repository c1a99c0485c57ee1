//! OCI hooks and the network namespace through the real `husk` binary (process backend):
//! hooks run at their phases with the state on stdin, failing or hanging ones fail
//! create cleanly (poststop still runs), host networking and bad namespace paths are
//! refused, and plumbing undone when create fails after it.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::errors::assert_create_fails_cleanly;
use crate::support::{unique_id, Bundle, Env};

/// A hook appending its stdin (the state) and `tag` as one line to `log`.
fn logging_hook(log: &Path, tag: &str) -> Value {
    json!({"path": "/bin/sh",
           "args": ["sh", "-c", format!("{{ cat; echo ' {tag}'; }} >> {}", log.display())]})
}

fn log_lines(log: &Path) -> Vec<(Value, String)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (state, tag) = l.rsplit_once(' ').unwrap();
            (serde_json::from_str(state).unwrap(), tag.to_string())
        })
        .collect()
}

#[test]
fn hooks_run_at_each_phase_with_the_state() {
    crate::support::become_subreaper();
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let mut b = Bundle::new(&["true"]);
    b.config["hooks"] = json!({
        "prestart": [logging_hook(&log, "prestart")],
        "createRuntime": [logging_hook(&log, "createRuntime")],
        "createContainer": [logging_hook(&log, "createContainer")],
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /tmp/start-hook-state"]}],
        "poststart": [logging_hook(&log, "poststart")],
        "poststop": [logging_hook(&log, "poststop")]});
    b.save();
    let id = unique_id("hooks");
    let c = env.create(&id, &b, None, &[]);
    let tags: Vec<String> = log_lines(&log).into_iter().map(|(_, t)| t).collect();
    assert_eq!(tags, ["prestart", "createRuntime", "createContainer"]);
    for (state, tag) in log_lines(&log) {
        assert_eq!(state["id"], id.as_str(), "{tag}");
        assert_eq!(state["status"], "creating", "{tag}");
        assert_eq!(state["pid"], c.pid, "{tag}: the sandbox's pid");
        assert_eq!(state["bundle"], b.path_str(), "{tag}");
    }
    env.ok(["start", &id]);
    let lines = log_lines(&log);
    assert_eq!(lines[3].1, "poststart");
    assert_eq!(lines[3].0["status"], "running");
    crate::support::wait_exit_status(c.pid, std::time::Duration::from_secs(30));
    env.ok(["delete", &id]);
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 5);
    assert_eq!(
        (lines[4].1.as_str(), &lines[4].0["status"]),
        ("poststop", &json!("stopped"))
    );
    env.assert_nothing_left(&id);
}

#[test]
fn a_failing_or_hanging_hook_fails_create_cleanly_and_poststop_runs() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("hooks.log");
    let mut b = Bundle::new(&["true"]);
    b.config["hooks"] = json!({
        "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "echo no network for you >&2; exit 4"]}],
        "poststop": [logging_hook(&log, "poststop")]});
    b.save();
    assert_create_fails_cleanly(&env, &b, "no network for you");
    assert_eq!(log_lines(&log).len(), 1, "poststop ran once");

    b.config["hooks"] = json!({
        "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "60"], "timeout": 1}]});
    b.save();
    assert_create_fails_cleanly(
        &env,
        &b,
        "createRuntime hook /bin/sleep: timed out after 1 s",
    );

    b.config["hooks"] = json!({"createContainer": [{"path": "/nonexistent/hook"}]});
    b.save();
    assert_create_fails_cleanly(&env, &b, "/nonexistent/hook");
}

#[test]
fn a_failing_start_hook_fails_start_and_stops_the_container() {
    crate::support::become_subreaper();
    let env = Env::new();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.config["hooks"] = json!({"startContainer": [
        {"path": "/bin/sh", "args": ["sh", "-c", "echo refused >&2; exit 9"]}]});
    b.save();
    let id = unique_id("starthook");
    let c = env.create(&id, &b, None, &[]);
    env.fails(["start", &id], "refused");
    let status = crate::support::wait_exit_status(c.pid, std::time::Duration::from_secs(30));
    assert_eq!(status, 137, "the container was killed");
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn host_networking_and_bad_namespace_paths_are_refused() {
    let env = Env::new();
    let mut b = Bundle::new(&["true"]);
    let ns = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| n["type"] != "network");
    b.save();
    assert_create_fails_cleanly(&env, &b, "--network host");

    let mut b = Bundle::new(&["true"]);
    set_netns_path(&mut b, "/run/netns/husk-no-such-namespace");
    assert_create_fails_cleanly(&env, &b, "/run/netns/husk-no-such-namespace");
    let file = tempfile::NamedTempFile::new().unwrap();
    set_netns_path(&mut b, &file.path().display().to_string());
    assert_create_fails_cleanly(&env, &b, "is not a network namespace");
}

fn set_netns_path(b: &mut Bundle, path: &str) {
    for n in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "network" {
            n["path"] = json!(path);
        }
    }
    b.save();
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_create_failing_after_the_plumbing_leaves_the_namespace_as_it_was() {
    // The process backend has no network devices: carrying an interface fails after
    // husk made its tap and filters, which must all be gone again.
    let env = Env::new();
    let name = format!("husk-cli-{}", std::process::id());
    ip(&["netns", "add", &name]);
    let _cleanup = scopeguard(name.clone());
    ip(&[
        "-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    ip(&["-n", &name, "link", "set", "eth0", "up"]);
    let mut b = Bundle::new(&["true"]);
    set_netns_path(&mut b, &format!("/run/netns/{name}"));
    assert_create_fails_cleanly(&env, &b, "cannot carry interfaces");
    let links = Command::new("ip")
        .args(["-n", &name, "-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("husktap"), "tap left behind: {links}");
    let qdiscs = Command::new("tc")
        .args(["-n", &name, "qdisc", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(!qdiscs.contains("ingress"), "qdisc left behind: {qdiscs}");
}

struct NetnsGuard(String);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
fn scopeguard(name: String) -> NetnsGuard {
    NetnsGuard(name)
}
