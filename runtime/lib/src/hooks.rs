//! OCI hooks on the host, run as runc runs them: each hook's `path` with its `args`
//! (`args[0]` is argv[0]), its `env` as the whole environment, the container's OCI state
//! as JSON on stdin, killed after `timeout` seconds. What each phase's failure does is
//! the caller's (runtime spec): prestart, createRuntime and createContainer fail `create`;
//! startContainer (run in the guest, see the agent) fails `start`; poststart and poststop
//! failures are warnings.
//!
//! Where they run in a VM runtime (as Kata documents its choices): prestart,
//! createRuntime, poststart and poststop on the host, in husk's namespaces (the
//! container's network namespace is reachable through the state's `pid`, the sandbox);
//! createContainer on the host too, since its path resolves in the runtime namespace and
//! the container's mount namespace lives in the guest; startContainer in the guest, inside
//! the container, since its path resolves in the container.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use oci_spec::runtime::{Hook, Spec};

/// The hook phases husk runs on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Deprecated but what Docker 20.10's networking uses; during create.
    Prestart,
    /// During create, after the runtime environment exists.
    CreateRuntime,
    /// During create (on the host: see the module documentation).
    CreateContainer,
    /// After start.
    Poststart,
    /// After delete.
    Poststop,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Prestart => "prestart",
            Phase::CreateRuntime => "createRuntime",
            Phase::CreateContainer => "createContainer",
            Phase::Poststart => "poststart",
            Phase::Poststop => "poststop",
        }
    }

    fn hooks(self, spec: &Spec) -> Vec<Hook> {
        let Some(h) = spec.hooks() else {
            return Vec::new();
        };
        #[allow(deprecated)]
        let list = match self {
            Phase::Prestart => h.prestart(),
            Phase::CreateRuntime => h.create_runtime(),
            Phase::CreateContainer => h.create_container(),
            Phase::Poststart => h.poststart(),
            Phase::Poststop => h.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// Runs the hooks of `phase` in order; the first failure is the error.
pub fn run(spec: &Spec, phase: Phase, state: &serde_json::Value) -> Result<()> {
    let state = serde_json::to_vec(state)?;
    for hook in phase.hooks(spec) {
        run_one(&hook, &state)
            .with_context(|| format!("{} hook {}", phase.name(), hook.path().display()))?;
    }
    Ok(())
}

/// Runs the hooks of `phase`, logging failures as warnings and going on.
pub fn run_warn(spec: &Spec, phase: Phase, state: &serde_json::Value) {
    let Ok(state) = serde_json::to_vec(state) else {
        return;
    };
    for hook in phase.hooks(spec) {
        if let Err(e) = run_one(&hook, &state) {
            tracing::warn!(
                "{} hook {} failed: {e:#}",
                phase.name(),
                hook.path().display()
            );
        }
    }
}

fn run_one(hook: &Hook, state: &[u8]) -> Result<()> {
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some(argv0) = args.first() {
        cmd.arg0(argv0);
    }
    cmd.args(args.iter().skip(1))
        .env_clear()
        .envs(
            hook.env()
                .iter()
                .flatten()
                .filter_map(|kv| kv.split_once('=')),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start it")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let state = state.to_vec();
    // The hook may never read its stdin: feed it on the side.
    std::thread::spawn(move || {
        let _ = stdin.write_all(&state);
    });
    let mut outputs = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stream.take(1 << 20).read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
        outputs.push(rx);
    }
    let deadline = hook
        .timeout()
        .filter(|&t| t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {} s", hook.timeout().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.success() {
        return Ok(());
    }
    // A child the hook left behind may keep its output open: wait briefly.
    let text: Vec<String> = outputs
        .into_iter()
        .map(|rx| {
            rx.recv_timeout(Duration::from_millis(500))
                .unwrap_or_default()
        })
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if text.is_empty() {
        bail!("{status}");
    }
    bail!("{status}: {}", text.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_with(hooks: serde_json::Value) -> Spec {
        serde_json::from_value(json!({"ociVersion": "1.0.2", "hooks": hooks})).unwrap()
    }

    #[test]
    fn hooks_get_the_state_on_stdin_their_env_and_args_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "cat >> {o}; a=$(tr '\\0' '\\n' < /proc/$$/cmdline); \
             printf ' %s %s FOO=%s HOME=%s\\n' \"$(echo \"$a\" | head -n 1)\" \"$(echo \"$a\" | tail -n 1)\" \"$FOO\" \"$HOME\" >> {o}",
            o = out.display()
        );
        let spec = spec_with(json!({"createRuntime": [
            {"path": "/bin/sh", "args": ["first", "-c", script.clone(), "arg1"], "env": ["FOO=bar"]},
            {"path": "/bin/sh", "args": ["second", "-c", script, "arg2"]}]}));
        // The test's own environment must not leak into hooks.
        assert!(std::env::var_os("HOME").is_some());
        let state = json!({"id": "c1", "status": "creating", "pid": 1});
        run(&spec, Phase::CreateRuntime, &state).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 2, "{got}");
        assert_eq!(lines[0], format!("{state} first arg1 FOO=bar HOME="));
        assert_eq!(lines[1], format!("{state} second arg2 FOO= HOME="));
    }

    #[test]
    fn a_failing_hook_stops_the_phase_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("second-ran");
        let spec = spec_with(json!({"prestart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]},
            {"path": "/bin/touch", "args": ["touch", marker]}]}));
        let e = format!("{:#}", run(&spec, Phase::Prestart, &json!({})).unwrap_err());
        assert!(
            e.contains("prestart hook /bin/sh")
                && e.contains("exit status: 3")
                && e.contains("nope"),
            "{e}"
        );
        assert!(!marker.exists(), "the second hook must not run");
    }

    #[test]
    fn a_hanging_hook_is_killed_at_its_timeout_and_a_missing_one_is_named() {
        let spec = spec_with(json!({"poststart": [
            {"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]}));
        let t = Instant::now();
        let e = format!(
            "{:#}",
            run(&spec, Phase::Poststart, &json!({})).unwrap_err()
        );
        assert!(e.contains("timed out after 1 s"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(10));
        let spec = spec_with(json!({"poststop": [{"path": "/no/such/hook"}]}));
        let e = format!("{:#}", run(&spec, Phase::Poststop, &json!({})).unwrap_err());
        assert!(
            e.contains("/no/such/hook") && e.contains("cannot start"),
            "{e}"
        );
        // As a warning it does not fail.
        run_warn(&spec, Phase::Poststop, &json!({}));
    }
}
