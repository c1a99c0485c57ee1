//! The container's stdio: inherited fds relayed to the guest process.

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use crate::support::{become_subreaper, unique_id, wait_exit_status, Bundle, Env};

const EXIT: Duration = Duration::from_secs(120);

#[test]
fn stdin_is_relayed_and_its_end_reaches_the_process() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sh", "-c", "cat; echo after-eof"]);
    let id = unique_id("stdin");
    let input = b"first line\nsecond line\n".repeat(1000);
    let c = env.create(&id, &bundle, Some(&input), &[]);
    env.ok(["start", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 0);
    let mut want = input.clone();
    want.extend_from_slice(b"after-eof\n");
    assert_eq!(c.stdout().as_bytes(), &want[..]);
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn a_hundred_mib_of_output_arrive_intact_and_in_order_beside_stderr() {
    become_subreaper();
    let env = Env::new();
    let line = "0123456789abcdefghijklmnopqrstuvwxyz\n";
    let total = 100 << 20;
    let script = format!(
        "echo to-stderr >&2; yes {} | head -c {total}; echo done >&2",
        line.trim_end()
    );
    let bundle = Bundle::new(&["sh", "-c", &script]);
    let id = unique_id("bigout");
    let c = env.create(&id, &bundle, None, &[]);
    env.ok(["start", &id]);
    assert_eq!(wait_exit_status(c.pid, EXIT), 0);
    let out = c.stdout();
    assert_eq!(out.len(), total);
    let full = total / line.len();
    assert!(
        out.as_bytes()
            .chunks(line.len())
            .take(full)
            .all(|chunk| chunk == line.as_bytes()),
        "output corrupted or reordered"
    );
    assert_eq!(c.stderr(), "to-stderr\ndone\n");
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn run_in_the_foreground_relays_stdin_stdout_and_stderr() {
    let env = Env::new();
    let bundle = Bundle::new(&["sh", "-c", "read x; echo got:$x; echo e >&2; exit 2"]);
    let id = unique_id("runio");
    let mut child = env
        .husk()
        .args(["run", "--bundle", &bundle.path_str(), &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello\n").unwrap();
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2));
    assert_eq!(out, "got:hello\n");
    assert_eq!(err, "e\n");
    env.assert_nothing_left(&id);
}
