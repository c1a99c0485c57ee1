//! Terminals: `--console-socket` receives a pty master (as the runc shim and conmon
//! expect), an interactive shell works through it, and window size follows.

use std::time::Duration;

use serde_json::json;

use crate::support::{
    become_subreaper, read_pid_file, unique_id, wait_exit_status, Bundle, ConsoleSocket, Env,
};

const EXIT: Duration = Duration::from_secs(60);

#[test]
fn an_interactive_shell_runs_on_the_console_socket_pty_and_follows_resizes() {
    become_subreaper();
    let env = Env::new();
    let mut bundle = Bundle::new(&["sh"]);
    bundle.config["process"]["terminal"] = json!(true);
    bundle.config["process"]["env"] = json!(["PATH=/bin", "TERM=xterm", "PS1=$ "]);
    bundle.save();
    let console = ConsoleSocket::new();
    let id = unique_id("tty");
    let c = env.create(
        &id,
        &bundle,
        None,
        &["--console-socket", &console.path_str()],
    );
    let term = console.master();
    env.ok(["start", &id]);
    let mut seen = String::new();
    term.write("echo $((6 * 7))\n");
    term.read_until("42", &mut seen);
    term.write("test -t 0 && echo on-a-tty\n");
    term.read_until("on-a-tty\r\n", &mut seen);
    term.resize_and_wait(33, 101, &mut seen);
    term.write("exit 7\n");
    assert_eq!(wait_exit_status(c.pid, EXIT), 7);
    env.ok(["delete", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn exec_with_a_terminal_on_a_console_socket() {
    become_subreaper();
    let env = Env::new();
    let bundle = Bundle::new(&["sleep", "1000"]);
    let id = unique_id("exectty");
    let _c = env.create_started(&id, &bundle);
    let console = ConsoleSocket::new();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let pid_arg = pid_file.display().to_string();
    env.ok([
        "exec",
        "--tty",
        "--detach",
        "--console-socket",
        &console.path_str(),
        "--pid-file",
        &pid_arg,
        &id,
        "sh",
        "-c",
        "test -t 1 && echo exec-on-tty; read line; exit $line",
    ]);
    let term = console.master();
    let mut seen = String::new();
    term.read_until("exec-on-tty", &mut seen);
    term.write("12\n");
    assert_eq!(wait_exit_status(read_pid_file(&pid_file), EXIT), 12);
    env.ok(["delete", "--force", &id]);
    env.assert_nothing_left(&id);
}

#[test]
fn run_in_the_foreground_uses_the_callers_terminal() {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let mut bundle = Bundle::new(&["sh"]);
    bundle.config["process"]["terminal"] = json!(true);
    bundle.config["process"]["env"] = json!(["PATH=/bin", "TERM=xterm", "PS1=$ "]);
    bundle.save();
    let id = unique_id("runtty");
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave: OwnedFd = pty.slave;
    let slave_fd = slave.as_raw_fd();
    let mut c = env.husk();
    c.args(["run", "--bundle", &bundle.path_str(), &id])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave.try_clone().unwrap());
    // SAFETY: setsid and ioctl are async-signal-safe; the child gets the pty as its
    // controlling terminal, as a shell's foreground job would have it.
    unsafe {
        c.pre_exec(move || {
            nix::unistd::setsid()?;
            if libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    let check = slave.try_clone().unwrap();
    drop(slave);
    let term = crate::support::Terminal::from_master(pty.master);
    let mut seen = String::new();
    term.write("echo $((6 * 7))\n");
    term.read_until("42", &mut seen);
    term.resize_and_wait(33, 101, &mut seen);
    term.write("exit 3\n");
    let deadline = std::time::Instant::now() + EXIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "husk run did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3));
    let t = nix::sys::termios::tcgetattr(&check).unwrap();
    assert!(
        t.local_flags
            .contains(nix::sys::termios::LocalFlags::ICANON | nix::sys::termios::LocalFlags::ECHO),
        "the caller's terminal is back out of raw mode"
    );
    env.assert_nothing_left(&id);
}
