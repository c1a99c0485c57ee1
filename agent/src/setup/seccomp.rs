//! `linux.seccomp` compiled to a classic BPF program and installed with seccomp(2).
//!
//! Written here rather than taken from a library: libseccomp would have to be linked
//! statically into the agent (it is the guest's `/init`), and the pure-Rust generators give
//! every rule of a filter the same action, while OCI profiles (Docker's among them) mix
//! actions and errno values per rule. The semantics follow runc on libseccomp:
//! - a rule whose action is the default action is dropped;
//! - conditions of one rule must all hold, except that when one argument is named more than
//!   once each condition becomes a rule of its own (libseccomp cannot AND those);
//! - names unknown on x86_64 (`chown32`, ...) are skipped;
//! - system calls newer than every one the profile names fail with `ENOSYS` instead of the
//!   default action, so that programs fall back as they would on an older kernel (runc's
//!   "enosys stub", which is what makes glibc fall back from `clone3`).

use std::collections::BTreeMap;
use std::io;

use anyhow::{bail, Context};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

use super::syscalls;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel refuses longer programs.
const BPF_MAXINSNS: usize = 4096;

// Offsets into `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20;
const JMP_JA: u16 = 0x05;
const JMP_JEQ_K: u16 = 0x15;
const JMP_JGT_K: u16 = 0x25;
const JMP_JGE_K: u16 = 0x35;
const JMP_JSET_K: u16 = 0x45;
const ALU_AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// What the filter answers for a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    KillThread,
    KillProcess,
    Trap,
    Errno(u16),
    Trace(u16),
    Log,
    Allow,
}

impl Action {
    fn from_spec(action: LinuxSeccompAction, errno_ret: Option<u32>) -> anyhow::Result<Action> {
        let errno = || -> anyhow::Result<u16> {
            let e = errno_ret.unwrap_or(libc::EPERM as u32);
            u16::try_from(e).with_context(|| format!("errnoRet {e} is out of range"))
        };
        Ok(match action {
            LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
                Action::KillThread
            }
            LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
            LinuxSeccompAction::ScmpActTrap => Action::Trap,
            LinuxSeccompAction::ScmpActErrno => Action::Errno(errno()?),
            LinuxSeccompAction::ScmpActTrace => Action::Trace(errno()?),
            LinuxSeccompAction::ScmpActLog => Action::Log,
            LinuxSeccompAction::ScmpActAllow => Action::Allow,
            LinuxSeccompAction::ScmpActNotify => {
                bail!("seccomp action SCMP_ACT_NOTIFY is not supported (no seccomp agent)")
            }
        })
    }

    /// The `SECCOMP_RET_*` value.
    fn ret(self) -> u32 {
        match self {
            Action::KillThread => 0,
            Action::KillProcess => 0x8000_0000,
            Action::Trap => 0x0003_0000,
            Action::Errno(e) => 0x0005_0000 | u32::from(e),
            Action::Trace(e) => 0x7ff0_0000 | u32::from(e),
            Action::Log => 0x7ffc_0000,
            Action::Allow => 0x7fff_0000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Condition {
    arg: u32,
    op: Op,
    value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    action: Action,
    /// All must hold; none means the rule always matches.
    conditions: Vec<Condition>,
}

/// A compiled filter and the flags to install it with.
#[derive(Debug, Clone)]
pub struct Filter {
    program: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
}

/// Compiles `seccomp` for x86_64.
pub fn compile(seccomp: &LinuxSeccomp) -> anyhow::Result<Filter> {
    if seccomp.listener_path().is_some() {
        bail!("seccomp listenerPath (a seccomp agent) is not supported");
    }
    let default = Action::from_spec(seccomp.default_action(), seccomp.default_errno_ret())
        .context("seccomp defaultAction")?;
    let mut rules: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
    for syscall in seccomp.syscalls().iter().flatten() {
        let action = Action::from_spec(syscall.action(), syscall.errno_ret())
            .with_context(|| format!("seccomp rule for {:?}", syscall.names()))?;
        if action == default {
            continue;
        }
        let conditions = syscall
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => Op::Ne,
                    LinuxSeccompOperator::ScmpCmpLt => Op::Lt,
                    LinuxSeccompOperator::ScmpCmpLe => Op::Le,
                    LinuxSeccompOperator::ScmpCmpEq => Op::Eq,
                    LinuxSeccompOperator::ScmpCmpGe => Op::Ge,
                    LinuxSeccompOperator::ScmpCmpGt => Op::Gt,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => Op::MaskedEq(a.value()),
                };
                let value = match op {
                    Op::MaskedEq(_) => a.value_two().unwrap_or(0),
                    _ => a.value(),
                };
                match u32::try_from(a.index()) {
                    Ok(arg) if arg < 6 => Ok(Condition { arg, op, value }),
                    _ => bail!("seccomp argument index {} is out of range", a.index()),
                }
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let repeats_an_argument = conditions
            .iter()
            .enumerate()
            .any(|(i, c)| conditions[..i].iter().any(|d| d.arg == c.arg));
        let new_rules: Vec<Rule> = if repeats_an_argument {
            conditions
                .iter()
                .map(|c| Rule {
                    action,
                    conditions: vec![*c],
                })
                .collect()
        } else {
            vec![Rule { action, conditions }]
        };
        for name in syscall.names() {
            if let Some(nr) = syscalls::number(name) {
                rules
                    .entry(nr)
                    .or_default()
                    .extend(new_rules.iter().cloned());
            }
        }
    }
    let non_native = seccomp
        .architectures()
        .iter()
        .flatten()
        .any(|a| matches!(a, Arch::ScmpArchX86 | Arch::ScmpArchX32));
    let mut flags = 0;
    for flag in seccomp.flags().iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 1,
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => 4,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 32,
        };
    }
    let program = generate(default, &rules, non_native)?;
    Ok(Filter { program, flags })
}

impl Filter {
    /// Installs the filter on the calling thread (and, with TSYNC, its siblings). Needs
    /// no_new_privs or CAP_SYS_ADMIN.
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `len` valid instructions that outlive the call; the
        // kernel copies the program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Number of BPF instructions.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.program.len()
    }
}

/// A jump target, resolved when the program is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label(usize);

#[derive(Debug, Clone, Copy)]
enum Insn {
    Stmt(u16, u32),
    Jump(u16, u32, Label, Label),
    Ja(Label),
    Here(Label),
}

#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    fn here(&mut self, l: Label) {
        self.code.push(Insn::Here(l));
    }

    fn load(&mut self, offset: u32) {
        self.code.push(Insn::Stmt(LD_W_ABS, offset));
    }

    fn ret(&mut self, action: Action) {
        self.code.push(Insn::Stmt(RET_K, action.ret()));
    }

    fn jump(&mut self, op: u16, k: u32, jt: Label, jf: Label) {
        self.code.push(Insn::Jump(op, k, jt, jf));
    }

    /// Real instructions (labels take no room).
    fn len(&self) -> usize {
        self.code
            .iter()
            .filter(|i| !matches!(i, Insn::Here(_)))
            .count()
    }

    fn append(&mut self, other: Asm) {
        self.code.extend(other.code);
    }

    fn assemble(self) -> anyhow::Result<Vec<libc::sock_filter>> {
        let mut at = vec![usize::MAX; self.labels];
        let mut pc = 0;
        for insn in &self.code {
            match insn {
                Insn::Here(l) => at[l.0] = pc,
                _ => pc += 1,
            }
        }
        if pc > BPF_MAXINSNS {
            bail!("seccomp profile compiles to {pc} BPF instructions, more than the kernel's {BPF_MAXINSNS}");
        }
        let offset = |from: usize, to: Label| -> anyhow::Result<usize> {
            let target = at[to.0];
            match target.checked_sub(from + 1) {
                Some(off) if target != usize::MAX => Ok(off),
                _ => bail!("seccomp compiler: bad jump target"),
            }
        };
        let mut out = Vec::with_capacity(pc);
        for insn in &self.code {
            let pc = out.len();
            let (code, k, jt, jf) = match *insn {
                Insn::Here(_) => continue,
                Insn::Stmt(code, k) => (code, k, 0, 0),
                Insn::Ja(to) => (JMP_JA, u32::try_from(offset(pc, to)?)?, 0, 0),
                Insn::Jump(code, k, t, f) => {
                    let short = |off: usize| {
                        u8::try_from(off).context("seccomp compiler: conditional jump too far")
                    };
                    (code, k, short(offset(pc, t)?)?, short(offset(pc, f)?)?)
                }
            };
            out.push(libc::sock_filter { code, jt, jf, k });
        }
        Ok(out)
    }
}

fn generate(
    default: Action,
    rules: &BTreeMap<u32, Vec<Rule>>,
    non_native: bool,
) -> anyhow::Result<Vec<libc::sock_filter>> {
    let foreign = if non_native {
        // Listed, but there is no i386/x32 table here: those callers get the default.
        default
    } else {
        Action::KillProcess
    };
    let mut asm = Asm::default();
    let native = asm.label();
    let not_native = asm.label();
    asm.load(OFF_ARCH);
    asm.jump(JMP_JEQ_K, AUDIT_ARCH_X86_64, native, not_native);
    asm.here(not_native);
    asm.ret(foreign);
    asm.here(native);
    asm.load(OFF_NR);
    let x32 = asm.label();
    let x86_64 = asm.label();
    asm.jump(JMP_JSET_K, X32_SYSCALL_BIT, x32, x86_64);
    asm.here(x32);
    asm.ret(foreign);
    asm.here(x86_64);
    if let Some(&last) = rules.keys().next_back() {
        if default != Action::Allow {
            let newer = asm.label();
            let known = asm.label();
            asm.jump(JMP_JGT_K, last, newer, known);
            asm.here(newer);
            asm.ret(Action::Errno(libc::ENOSYS as u16));
            asm.here(known);
        }
    }
    for (&nr, rules) in rules {
        let mut body = Asm {
            code: Vec::new(),
            labels: asm.labels,
        };
        syscall_body(&mut body, rules, default);
        asm.labels = body.labels;
        let this = asm.label();
        let next = asm.label();
        if body.len() <= usize::from(u8::MAX) {
            asm.jump(JMP_JEQ_K, nr, this, next);
            asm.here(this);
        } else {
            let skip = asm.label();
            asm.jump(JMP_JEQ_K, nr, this, skip);
            asm.here(skip);
            asm.code.push(Insn::Ja(next));
            asm.here(this);
        }
        asm.append(body);
        asm.here(next);
    }
    asm.ret(default);
    asm.assemble()
}

/// The instructions run once the number matched: the rules in order, conditional ones
/// first, and the default when none matches.
fn syscall_body(asm: &mut Asm, rules: &[Rule], default: Action) {
    let (unconditional, conditional): (Vec<&Rule>, Vec<&Rule>) =
        rules.iter().partition(|r| r.conditions.is_empty());
    for rule in conditional {
        let fail = asm.label();
        for cond in &rule.conditions {
            let holds = asm.label();
            condition(asm, cond, holds, fail);
            asm.here(holds);
        }
        asm.ret(rule.action);
        asm.here(fail);
    }
    asm.ret(unconditional.first().map_or(default, |r| r.action));
}

/// Jumps to `t` if the 64-bit argument comparison holds, else to `f`.
fn condition(asm: &mut Asm, cond: &Condition, t: Label, f: Label) {
    let lo_off = OFF_ARGS + 8 * cond.arg;
    let hi_off = lo_off + 4;
    let (v_hi, v_lo) = ((cond.value >> 32) as u32, cond.value as u32);
    match cond.op {
        Op::Eq | Op::Ne => {
            let (t, f) = if cond.op == Op::Eq { (t, f) } else { (f, t) };
            let lo = asm.label();
            asm.load(hi_off);
            asm.jump(JMP_JEQ_K, v_hi, lo, f);
            asm.here(lo);
            asm.load(lo_off);
            asm.jump(JMP_JEQ_K, v_lo, t, f);
        }
        Op::Gt | Op::Ge | Op::Lt | Op::Le => {
            // Lt is "not Ge", Le is "not Gt".
            let (strict, t, f) = match cond.op {
                Op::Gt => (true, t, f),
                Op::Ge => (false, t, f),
                Op::Lt => (false, f, t),
                _ => (true, f, t),
            };
            let hi_equal = asm.label();
            let hi_not_greater = asm.label();
            asm.load(hi_off);
            asm.jump(JMP_JGT_K, v_hi, t, hi_not_greater);
            asm.here(hi_not_greater);
            asm.jump(JMP_JEQ_K, v_hi, hi_equal, f);
            asm.here(hi_equal);
            asm.load(lo_off);
            let op = if strict { JMP_JGT_K } else { JMP_JGE_K };
            asm.jump(op, v_lo, t, f);
        }
        Op::MaskedEq(mask) => {
            let lo = asm.label();
            asm.load(hi_off);
            asm.code.push(Insn::Stmt(ALU_AND_K, (mask >> 32) as u32));
            asm.jump(JMP_JEQ_K, v_hi, lo, f);
            asm.here(lo);
            asm.load(lo_off);
            asm.code.push(Insn::Stmt(ALU_AND_K, mask as u32));
            asm.jump(JMP_JEQ_K, v_lo, t, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic BPF interpreter for the instructions the compiler emits.
    fn run(filter: &Filter, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        let prog = &filter.program;
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().unwrap());
                }
                ALU_AND_K => acc &= i.k,
                RET_K => return i.k,
                JMP_JA => pc += i.k as usize,
                code => {
                    let taken = match code {
                        JMP_JEQ_K => acc == i.k,
                        JMP_JGT_K => acc > i.k,
                        JMP_JGE_K => acc >= i.k,
                        JMP_JSET_K => acc & i.k != 0,
                        _ => panic!("unknown opcode {code:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
            }
        }
    }

    fn filter(json: serde_json::Value) -> Filter {
        compile(&serde_json::from_value(json).unwrap()).unwrap()
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0001;
    fn nr(name: &str) -> u32 {
        syscalls::number(name).unwrap()
    }

    #[test]
    fn named_calls_get_their_action_and_the_rest_the_default() {
        let f = filter(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
        }));
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr("mkdir"), [0; 6]), EPERM);
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr("mkdirat"), [0; 6]), EPERM);
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr("write"), [0; 6]), ALLOW);
        // No stub when the default allows anyway.
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, 460, [0; 6]), ALLOW);
    }

    #[test]
    fn errno_ret_and_kill_actions_are_encoded() {
        let f = filter(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["write"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["getpid"], "action": "SCMP_ACT_KILL_PROCESS"},
                {"names": ["getuid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        }));
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr("read"), [0; 6]), ALLOW);
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr("write"), [0; 6]), 0x0005_000d);
        assert_eq!(
            run(&f, AUDIT_ARCH_X86_64, nr("getpid"), [0; 6]),
            0x8000_0000
        );
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, nr("close"), [0; 6]), 0x0005_0026);
    }

    #[test]
    fn conditions_compare_all_64_bits() {
        let f = filter(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 4294967295u64, "op": "SCMP_CMP_EQ"}]},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288u64, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["dup3"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 2, "value": 0x1_0000_0000u64, "op": "SCMP_CMP_GE"},
                          {"index": 1, "value": 10, "op": "SCMP_CMP_LT"}]}
            ]
        }));
        let x = AUDIT_ARCH_X86_64;
        let p = nr("personality");
        assert_eq!(run(&f, x, p, [8, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f, x, p, [0xffff_ffff, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f, x, p, [0x1_0000_0008, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(run(&f, x, p, [9, 0, 0, 0, 0, 0]), EPERM);
        let s = nr("socket");
        assert_eq!(run(&f, x, s, [2, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f, x, s, [40, 0, 0, 0, 0, 0]), EPERM);
        let c = nr("clone");
        assert_eq!(run(&f, x, c, [0x11_0000 | 17, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            run(&f, x, c, [0x2000_0000, 0, 0, 0, 0, 0]),
            EPERM,
            "CLONE_NEWPID"
        );
        let d = nr("dup3");
        assert_eq!(run(&f, x, d, [0, 9, 0x1_0000_0000, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f, x, d, [0, 9, 0xffff_ffff, 0, 0, 0]), EPERM);
        assert_eq!(run(&f, x, d, [0, 10, 0x2_0000_0000, 0, 0, 0]), EPERM);
    }

    #[test]
    fn le_and_gt_split_at_the_value() {
        for (op, below, at, above) in [
            ("SCMP_CMP_LE", ALLOW, ALLOW, EPERM),
            ("SCMP_CMP_GT", EPERM, EPERM, ALLOW),
            ("SCMP_CMP_LT", ALLOW, EPERM, EPERM),
            ("SCMP_CMP_GE", EPERM, ALLOW, ALLOW),
        ] {
            let f = filter(serde_json::json!({
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                              "args": [{"index": 5, "value": 0x5_0000_0005u64, "op": op}]}]
            }));
            let r = |v: u64| run(&f, AUDIT_ARCH_X86_64, 0, [0, 0, 0, 0, 0, v]);
            assert_eq!(r(0x5_0000_0004), below, "{op} below");
            assert_eq!(r(0x4_ffff_ffff), below, "{op} below (high word)");
            assert_eq!(r(0x5_0000_0005), at, "{op} at");
            assert_eq!(r(0x5_0000_0006), above, "{op} above");
            assert_eq!(r(0x6_0000_0000), above, "{op} above (high word)");
        }
    }

    #[test]
    fn one_argument_named_twice_means_either_condition() {
        let f = filter(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                                   {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, 0, [1, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, 0, [2, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, 0, [3, 0, 0, 0, 0, 0]), EPERM);
    }

    #[test]
    fn calls_newer_than_the_profile_fail_with_enosys_and_other_abis_are_refused() {
        let f = filter(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["read", "chown32"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["openat"], "action": "SCMP_ACT_ALLOW"}]
        }));
        assert_eq!(
            run(&f, AUDIT_ARCH_X86_64, nr("openat") + 1, [0; 6]),
            0x0005_0026
        );
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, 1, [0; 6]), EPERM);
        assert_eq!(
            run(&f, 0x4000_0003, 0, [0; 6]),
            0x8000_0000,
            "i386 not listed"
        );
        assert_eq!(
            run(&f, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT, [0; 6]),
            0x8000_0000,
            "x32 not listed"
        );
    }

    #[test]
    fn long_rule_lists_jump_over_far_bodies() {
        let args: Vec<_> = (0..120)
            .map(|i| {
                serde_json::json!({"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": i, "op": "SCMP_CMP_EQ"},
                             {"index": 1, "value": 7, "op": "SCMP_CMP_EQ"}]})
            })
            .collect();
        let f = filter(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": args}));
        assert!(f.len() > 256);
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, 0, [119, 7, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, 0, [120, 7, 0, 0, 0, 0]), EPERM);
        // Only read is named, so every other call counts as newer than the profile.
        assert_eq!(run(&f, AUDIT_ARCH_X86_64, 3, [0; 6]), 0x0005_0026);
    }

    #[test]
    fn notify_is_refused() {
        let spec: LinuxSeccomp = serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_NOTIFY"
        }))
        .unwrap();
        assert!(compile(&spec).is_err());
    }
}
