//! Seccomp filters, one per thread role, as Firecracker runs its VMM.
//!
//! Each thread of a confined VMM process installs the filter of its role when it starts,
//! before it touches anything the guest controls: [`ThreadRole::Vcpu`] (KVM_RUN and the
//! MMIO/port exits it serves), [`ThreadRole::Device`] (the epoll loop running the device
//! models and their backends), [`ThreadRole::Control`] (the sandbox's main thread, its
//! control socket, agent connection, stdio relays, signal thread and the VM's watchdog;
//! threads these start inherit the filter). The allowlists live one file per role in this
//! module, compiled into husk; a device whose backend needs more declares it through
//! [`crate::devices::virtio::VirtioDevice::confinement`], and the builder adds that to the
//! device role.
//!
//! A system call outside the allowlist traps (SIGSYS): the handler installed by
//! [`install_violation_handler`] writes one line naming the thread role and the call to
//! the record descriptor and ends the process with [`VIOLATION_EXIT_CODE`] (128 + SIGSYS,
//! what a shell reports for a process killed by SIGSYS).

pub mod control;
pub mod device;
pub mod vcpu;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Exit status of a process ended by a seccomp violation: 128 + SIGSYS.
pub const VIOLATION_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// What a thread does, and so which system calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ThreadRole {
    /// Runs a vCPU: KVM_RUN and the device registers the guest touches.
    Vcpu = 1,
    /// Runs the device models and their host backends.
    Device = 2,
    /// Everything else in a sandbox: control socket, agent client, stdio, signals.
    Control = 3,
}

impl ThreadRole {
    /// The role's name as records show it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadRole::Vcpu => "vCPU",
            ThreadRole::Device => "device",
            ThreadRole::Control => "control",
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(ThreadRole::Vcpu),
            2 => Some(ThreadRole::Device),
            3 => Some(ThreadRole::Control),
            _ => None,
        }
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The allowlist did not compile (a bug in husk).
    #[error("building the {role} seccomp filter: {source}")]
    Build {
        /// The role.
        role: &'static str,
        /// Why.
        source: seccompiler::BackendError,
    },
    /// The kernel refused the filter.
    #[error("installing the {role} seccomp filter: {source}")]
    Install {
        /// The role.
        role: &'static str,
        /// Why.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the seccomp violation handler: {0}")]
    Handler(std::io::Error),
}

/// A set of allowed system calls, each allowed outright or when one of its rules matches.
#[derive(Debug, Default, Clone)]
pub struct Allowlist {
    // An empty rule list means "always allowed".
    entries: BTreeMap<i64, Vec<SeccompRule>>,
}

impl Allowlist {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows each of `syscalls` with any arguments.
    pub fn allow(&mut self, syscalls: &[libc::c_long]) -> &mut Self {
        for &nr in syscalls {
            self.entries.insert(nr, Vec::new());
        }
        self
    }

    /// Allows `syscall` when argument `arg` (0-based) equals one of `values`.
    pub fn allow_arg_in(&mut self, syscall: libc::c_long, arg: u8, values: &[u64]) -> &mut Self {
        let rules = values
            .iter()
            .map(|&v| rule(&[(arg, SeccompCmpOp::Eq, v)]))
            .collect();
        self.add_rules(syscall, rules)
    }

    /// Allows `syscall` when every `(arg, value)` pair matches (argument `arg` equals
    /// `value`).
    pub fn allow_args_eq(&mut self, syscall: libc::c_long, conditions: &[(u8, u64)]) -> &mut Self {
        let conditions: Vec<_> = conditions
            .iter()
            .map(|&(arg, v)| (arg, SeccompCmpOp::Eq, v))
            .collect();
        self.add_rules(syscall, vec![rule(&conditions)])
    }

    /// Allows `syscall` when `(argument arg & mask) == value`.
    pub fn allow_arg_masked(
        &mut self,
        syscall: libc::c_long,
        arg: u8,
        mask: u64,
        value: u64,
    ) -> &mut Self {
        self.add_rules(
            syscall,
            vec![rule(&[(arg, SeccompCmpOp::MaskedEq(mask), value)])],
        )
    }

    fn add_rules(&mut self, syscall: libc::c_long, rules: Vec<SeccompRule>) -> &mut Self {
        match self.entries.get_mut(&syscall) {
            // Already allowed outright: rules would only narrow it.
            Some(existing) if existing.is_empty() => {}
            Some(existing) => existing.extend(rules),
            None => {
                self.entries.insert(syscall, rules);
            }
        }
        self
    }

    /// Adds everything `other` allows.
    pub fn merge(&mut self, other: &Allowlist) -> &mut Self {
        for (&nr, rules) in &other.entries {
            if rules.is_empty() {
                self.entries.insert(nr, Vec::new());
            } else {
                self.add_rules(nr, rules.clone());
            }
        }
        self
    }

    /// Whether `syscall` is allowed with some arguments.
    pub fn contains(&self, syscall: libc::c_long) -> bool {
        self.entries.contains_key(&syscall)
    }

    /// Number of system calls in the list.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn rule(conditions: &[(u8, SeccompCmpOp, u64)]) -> SeccompRule {
    let conditions = conditions
        .iter()
        .map(|(arg, op, value)| {
            SeccompCondition::new(*arg, SeccompCmpArgLen::Qword, op.clone(), *value)
                .expect("argument index below 6")
        })
        .collect();
    SeccompRule::new(conditions).expect("a rule has at least one condition")
}

/// What every thread needs, whatever its role: memory, locks, time, its own end, and
/// writing log lines.
pub fn base() -> Allowlist {
    let mut l = Allowlist::new();
    l.allow(&[
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        // glibc grows per-thread malloc arenas with mprotect.
        libc::SYS_mprotect,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_getrandom,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_rt_sigreturn,
        // A sleep or wait interrupted by a stop (SIGSTOP, a cgroup freeze, a debugger)
        // resumes through restart_syscall.
        libc::SYS_restart_syscall,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_write,
        libc::SYS_close,
    ]);
    if cfg!(debug_assertions) {
        // Debug builds of Rust's std check that a descriptor is open before closing it.
        l.allow_arg_in(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]);
    }
    l
}

/// A role's filter, compiled and ready to install.
#[derive(Debug, Clone)]
pub struct RoleFilter {
    role: ThreadRole,
    programs: Vec<BpfProgram>,
}

impl RoleFilter {
    /// Compiles `allowed` for `role`: anything else traps.
    pub fn compile(role: ThreadRole, allowed: &Allowlist) -> Result<Self, SeccompError> {
        let err = |source| SeccompError::Build {
            role: role.name(),
            source,
        };
        let arch = TargetArch::x86_64;
        let main = SeccompFilter::new(
            allowed.entries.clone(),
            SeccompAction::Trap,
            SeccompAction::Allow,
            arch,
        )
        .map_err(err)?;
        let mut programs = Vec::new();
        if allowed.contains(libc::SYS_clone3) {
            // clone3 passes its flags in memory, where a filter cannot look: make it fail
            // with ENOSYS so glibc falls back to clone, whose flags the allowlist checks.
            // Stacked filters take the strictest answer, so ERRNO beats the ALLOW above.
            let mut rules = BTreeMap::new();
            rules.insert(libc::SYS_clone3, Vec::new());
            let no_clone3 = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                arch,
            )
            .map_err(err)?;
            // First: installing a filter takes prctl and seccomp, which the main one forbids.
            programs.push(BpfProgram::try_from(no_clone3).map_err(err)?);
        }
        programs.push(BpfProgram::try_from(main).map_err(err)?);
        Ok(Self { role, programs })
    }

    /// The role.
    pub fn role(&self) -> ThreadRole {
        self.role
    }

    /// Installs the filter on the calling thread (and the threads it starts from now on).
    /// Sets no_new_privs first, as the kernel requires.
    pub fn install(&self) -> Result<(), SeccompError> {
        THREAD_ROLE.with(|r| r.set(self.role as u8));
        let mut name = [0u8; 16];
        if let Some(n) = std::thread::current().name() {
            let n = &n.as_bytes()[..n.len().min(15)];
            name[..n.len()].copy_from_slice(n);
        }
        THREAD_NAME.with(|t| t.set(name));
        if self.role == ThreadRole::Control {
            // Only control threads start threads: theirs inherit the filter and the role.
            INHERITED_ROLE.store(self.role as u8, Ordering::SeqCst);
        }
        for p in &self.programs {
            seccompiler::apply_filter(p).map_err(|source| SeccompError::Install {
                role: self.role.name(),
                source,
            })?;
        }
        Ok(())
    }
}

thread_local! {
    /// The role of the filter this thread installed, for the violation record.
    static THREAD_ROLE: Cell<u8> = const { Cell::new(0) };
    /// The name of the thread that installed its filter, for the violation record (the
    /// handler may not allocate).
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

/// The role of threads that did not install a filter themselves but inherited one.
static INHERITED_ROLE: AtomicU8 = AtomicU8::new(0);
static RECORD_FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);
static RECORD_JSON: AtomicBool = AtomicBool::new(false);

/// Installs the SIGSYS handler that turns a seccomp violation into one line on `record`
/// (runc's JSON error line with `json`) and the end of the process with
/// [`VIOLATION_EXIT_CODE`]. `record` must stay open for the life of the process.
pub fn install_violation_handler(record: RawFd, json: bool) -> Result<(), SeccompError> {
    RECORD_FD.store(record, Ordering::SeqCst);
    RECORD_JSON.store(json, Ordering::SeqCst);
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

/// A fixed-size line buffer: the signal handler may not allocate.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The record line for a violation by a thread of `role` (0 if none) named `thread`
/// (NUL-padded, may be empty) making call `nr`.
fn violation_line(role: u8, thread: &[u8], nr: i64, json: bool) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    let name = ThreadRole::from_u8(role).map_or("unconfined", ThreadRole::name);
    line.push(if json {
        b"{\"level\":\"error\",\"msg\":\""
    } else {
        b"husk: "
    });
    line.push(b"seccomp: the ");
    line.push(name.as_bytes());
    line.push(b" thread");
    let thread = &thread[..thread.iter().position(|&b| b == 0).unwrap_or(thread.len())];
    // Thread names are ours, but keep the line one line of plain text whatever they hold.
    if !thread.is_empty() && thread.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        line.push(b" (");
        line.push(thread);
        line.push(b")");
    }
    line.push(b" made the forbidden system call ");
    line.push_number(nr as u64);
    line.push(b"; the sandbox ends");
    line.push(if json { b"\"}\n" } else { b"\n" });
    line
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: three ints and padding, then
/// the `_sigsys` member (`_call_addr` pointer, `_syscall` int, `_arch` unsigned).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for a SIGSYS raised by seccomp; its
    // `_sigsys._syscall` field is an int at SI_SYSCALL_OFFSET.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read()
    };
    let mut thread = THREAD_NAME.with(Cell::get);
    let role = match THREAD_ROLE.with(Cell::get) {
        0 => {
            // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer; the control
            // role, the only one threads inherit, allows it.
            unsafe { libc::prctl(libc::PR_GET_NAME, thread.as_mut_ptr()) };
            INHERITED_ROLE.load(Ordering::Relaxed)
        }
        own => own,
    };
    let line = violation_line(
        role,
        &thread,
        i64::from(nr),
        RECORD_JSON.load(Ordering::Relaxed),
    );
    // SAFETY: write(2) and _exit(2) are async-signal-safe and allowed by every role; the
    // buffer is a live local.
    unsafe {
        libc::write(
            RECORD_FD.load(Ordering::Relaxed),
            line.buf.as_ptr().cast(),
            line.len,
        );
        libc::_exit(VIOLATION_EXIT_CODE);
    }
}

/// Makes a system call that no role allows (`sysinfo`, harmless where it is allowed), so
/// that tests can see a violation end a confined process.
pub fn trigger_violation() {
    let mut info = std::mem::MaybeUninit::<libc::sysinfo>::uninit();
    // SAFETY: sysinfo writes one struct into the buffer we pass.
    unsafe { libc::syscall(libc::SYS_sysinfo, info.as_mut_ptr()) };
}

#[cfg(test)]
mod tests;
