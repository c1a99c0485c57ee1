//! The task service containerd calls (task API v2): each request maps onto an operation
//! of the runtime library ([`husk_runtime::container`]), as the runc shim maps them onto
//! `runc` commands, and the events containerd expects are published in the same order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use containerd_shim::api::Empty;
use containerd_shim::api::{self, Status};
use containerd_shim::event::Event;
use containerd_shim::monitor::{monitor_subscribe, ExitEvent, Subject, Topic};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use husk_runtime::container::create::{create, CreateOptions};
use husk_runtime::container::exec::{spawn_detached, ExecPlan};
use husk_runtime::pod::{self, Member, MemberIo};
use husk_runtime::state::ContainerDir;
use husk_runtime::Globals;

use crate::error::{already_finished, invalid, not_found, precondition, to_ttrpc, unimplemented};
use crate::io::StdioPaths;
use crate::process::{Exit, Process};
use crate::rootfs;

/// The task service of one shim: the containers it created (one, or every container of
/// a pod once pods share a VM) and their execs.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    /// Where the containers' state directories live (husk's `--root`).
    state_root: PathBuf,
    debug: bool,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    tasks: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    containers: HashMap<String, Container>,
    /// Exits of pids not (yet) known to belong to a process: a process can exit before
    /// its pid is recorded.
    unclaimed: HashMap<i32, i32>,
}

struct Container {
    bundle: PathBuf,
    globals: Globals,
    /// Its state directory; for a pod's member container, its pod's sandbox container's
    /// (which holds the VM, its agent and its control socket).
    dir: ContainerDir,
    /// Set for a container that joined a pod's VM: it is reached through the agent, and
    /// its exit comes from the agent, not from a process of the shim's.
    member: Option<Arc<Member>>,
    init: Process,
    execs: HashMap<String, Process>,
    rootfs_mounted: bool,
}

impl TaskService {
    /// The service; a thread turns reaped children into exits.
    pub fn new(
        namespace: &str,
        state_root: PathBuf,
        debug: bool,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let inner = Arc::new(Inner {
            namespace: namespace.to_owned(),
            state_root,
            debug,
            publisher,
            exit,
            tasks: Mutex::default(),
        });
        let svc = Self { inner };
        let for_exits = svc.clone();
        match monitor_subscribe(Topic::All) {
            Ok(sub) => {
                std::thread::Builder::new()
                    .name("exits".into())
                    .spawn(move || {
                        while let Ok(ev) = sub.rx.recv() {
                            for_exits.on_exit(ev);
                        }
                    })
                    .expect("starting the exit thread");
            }
            Err(e) => log::error!("cannot watch child exits: {e}"),
        }
        svc
    }

    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, event: impl Event + 'static) {
        let topic = event.topic();
        if let Err(e) = self.inner.publisher.publish(
            Context::default(),
            &topic,
            &self.inner.namespace,
            Box::new(event),
        ) {
            log::warn!("publishing {topic}: {e}");
        }
    }

    /// A child the reaper collected: a container's sandbox or an exec child.
    fn on_exit(&self, ev: ExitEvent) {
        let Subject::Pid(pid) = ev.subject else {
            return;
        };
        let status = u32::try_from(ev.exit_code).unwrap_or(255);
        let mut tasks = self.tasks();
        if !self.claim_exit(&mut tasks, pid, status) {
            // Bounded: pids nobody claims (none are expected) must not pile up.
            if tasks.unclaimed.len() >= 1024 {
                tasks.unclaimed.clear();
            }
            tasks.unclaimed.insert(pid, ev.exit_code);
        }
    }

    /// Records `pid`'s exit on the process it belongs to; false if none.
    fn claim_exit(&self, tasks: &mut Tasks, pid: i32, status: u32) -> bool {
        let at = containerd_shim::util::timestamp().unwrap_or_default();
        for (id, c) in tasks.containers.iter_mut() {
            let mut hit: Option<(String, &mut Process)> = None;
            if c.init.pid == pid && c.member.is_none() {
                hit = Some((id.clone(), &mut c.init));
            } else if let Some((exec_id, p)) = c.execs.iter_mut().find(|(_, p)| p.pid == pid) {
                hit = Some((exec_id.clone(), p));
            }
            let Some((exec_id, p)) = hit else { continue };
            if let Some(stdio) = p.stdio.as_mut() {
                stdio.finish(Duration::from_secs(2));
            }
            p.exit.set(Exit {
                status,
                at: at.clone(),
            });
            self.publish(TaskExit {
                container_id: id.clone(),
                id: exec_id,
                pid: pid as u32,
                exit_status: status,
                exited_at: MessageField::some(at),
                ..Default::default()
            });
            return true;
        }
        false
    }

    /// A pod member's exit, as the agent reported it.
    fn member_exited(&self, id: &str, code: i32) {
        let at = containerd_shim::util::timestamp().unwrap_or_default();
        let status = u32::try_from(code).unwrap_or(255);
        let mut tasks = self.tasks();
        let Some(c) = tasks.containers.get_mut(id) else {
            return;
        };
        if let Some(stdio) = c.init.stdio.as_mut() {
            stdio.finish(Duration::from_secs(2));
        }
        c.init.exit.set(Exit {
            status,
            at: at.clone(),
        });
        let pid = c.init.pid;
        drop(tasks);
        self.publish(TaskExit {
            container_id: id.to_owned(),
            id: id.to_owned(),
            pid: pid as u32,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        });
    }

    /// Registers `pid` for a process just started; an exit seen before is applied now.
    fn started(&self, tasks: &mut Tasks, pid: i32) {
        if let Some(code) = tasks.unclaimed.remove(&pid) {
            let status = u32::try_from(code).unwrap_or(255);
            self.claim_exit(tasks, pid, status);
        }
    }

    fn globals_for(&self, bundle: &Path) -> Globals {
        Globals {
            root: self.inner.state_root.clone(),
            log: husk_runtime::logging::LogConfig {
                file: Some(bundle.join("log.json")),
                format: husk_runtime::logging::LogFormat::Json,
                debug: self.inner.debug,
            },
            systemd_cgroup: false,
        }
    }

    fn do_create(&self, req: &api::CreateTaskRequest) -> anyhow::Result<i32> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            anyhow::bail!("husk cannot restore checkpoints");
        }
        if self.tasks().containers.contains_key(&req.id) {
            anyhow::bail!("container {:?} already exists in this shim", req.id);
        }
        let bundle = PathBuf::from(&req.bundle);
        let mounted = rootfs::mount(&bundle, &req.rootfs)?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let joined = husk_runtime::bundle::Bundle::load(&bundle).and_then(|b| {
            match pod::role(b.spec.annotations().as_ref(), &req.id) {
                pod::Role::Member(sandbox) => {
                    self.create_member(&sandbox, &req.id, b, &paths).map(Some)
                }
                _ => Ok(None),
            }
        });
        match joined {
            Ok(Some(pid)) => {
                if let Some(c) = self.tasks().containers.get_mut(&req.id) {
                    c.rootfs_mounted = mounted;
                }
                return Ok(pid);
            }
            Ok(None) => {}
            Err(e) => {
                if mounted {
                    rootfs::unmount(&bundle);
                }
                return Err(e);
            }
        }
        let result = self.create_in(&bundle, &req.id, &paths);
        let (pid, dir, globals, stdio) = match result {
            Ok(r) => r,
            Err(e) => {
                if mounted {
                    rootfs::unmount(&bundle);
                }
                return Err(e);
            }
        };
        let mut init = Process::new(paths);
        init.pid = pid;
        init.stdio = Some(stdio);
        let mut tasks = self.tasks();
        tasks.containers.insert(
            req.id.clone(),
            Container {
                bundle,
                globals,
                dir,
                init,
                member: None,
                execs: HashMap::new(),
                rootfs_mounted: mounted,
            },
        );
        self.started(&mut tasks, pid);
        drop(tasks);
        self.watch_oom(&req.id);
        Ok(pid)
    }

    /// Publishes `TaskOOM` whenever the guest OOM-kills a process of the container.
    fn watch_oom(&self, id: &str) {
        let Some(agent) = self
            .with_container(id, |c| Ok(c.dir.load().ok().and_then(|r| r.husk.agent)))
            .ok()
            .flatten()
        else {
            return;
        };
        let (svc, id) = (self.clone(), id.to_owned());
        let _ = std::thread::Builder::new()
            .name("oom".into())
            .spawn(move || {
                crate::stats::watch_oom(&agent, &id, || {
                    svc.publish(TaskOOM {
                        container_id: id.clone(),
                        ..Default::default()
                    })
                })
            });
    }

    /// Creates a container of a pod in the pod's running VM (see [`husk_runtime::pod`]).
    fn create_member(
        &self,
        sandbox: &str,
        id: &str,
        bundle: husk_runtime::bundle::Bundle,
        paths: &StdioPaths,
    ) -> anyhow::Result<i32> {
        let (pod_dir, pod_pid, globals) = {
            let tasks = self.tasks();
            let pod = tasks.containers.get(sandbox).with_context(|| {
                format!("the pod's sandbox container {sandbox:?} is not in this shim")
            })?;
            if pod.init.exit.get().is_some() {
                anyhow::bail!("the pod's sandbox container {sandbox:?} has stopped");
            }
            (pod.dir.clone(), pod.init.pid, pod.globals.clone())
        };
        let io = MemberIo {
            stdin: !paths.stdin.is_empty(),
            stdout: !paths.stdout.is_empty(),
            stderr: !paths.stderr.is_empty(),
            terminal: paths.terminal,
        };
        let bundle_dir = bundle.dir.clone();
        let (member, streams) = Member::create(&pod_dir, id, bundle, io)?;
        let stdio = match crate::io::ProcessStdio::from_streams(paths, streams) {
            Ok(s) => s,
            Err(e) => {
                let _ = member.remove();
                return Err(e);
            }
        };
        let member = Arc::new(member);
        let mut init = Process::new(paths.clone());
        init.pid = pod_pid;
        init.stdio = Some(stdio);
        self.tasks().containers.insert(
            id.to_owned(),
            Container {
                bundle: bundle_dir,
                globals,
                dir: pod_dir,
                member: Some(member.clone()),
                init,
                execs: HashMap::new(),
                rootfs_mounted: false,
            },
        );
        let (svc, id_owned) = (self.clone(), id.to_owned());
        std::thread::Builder::new()
            .name("member-wait".into())
            .spawn(move || {
                let code = member.wait();
                svc.member_exited(&id_owned, code);
            })
            .context("starting the container's waiter")?;
        self.watch_oom(id);
        Ok(pod_pid)
    }

    fn create_in(
        &self,
        bundle: &Path,
        id: &str,
        paths: &StdioPaths,
    ) -> anyhow::Result<(i32, ContainerDir, Globals, crate::io::ProcessStdio)> {
        let globals = self.globals_for(bundle);
        let (mut stdio, child) = paths.open(&self.inner.state_root)?;
        let console = stdio.console_socket();
        let created = create(
            &globals,
            &CreateOptions {
                id,
                bundle,
                pid_file: None,
                console_socket: console.as_deref(),
                preserve_fds: 0,
                foreground: false,
                stdio: Some(child),
            },
        )?;
        let pid = created.sandbox.id() as i32;
        if let Err(e) = stdio.attach_terminal(paths) {
            let dir = created.dir.clone();
            drop(created);
            let _ = dir
                .load()
                .and_then(|rec| husk_runtime::container::delete::delete(&dir, &rec, true));
            return Err(e);
        }
        Ok((pid, created.dir, globals, stdio))
    }

    fn with_container<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        let mut tasks = self.tasks();
        let c = tasks
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found(format!("container {id:?} does not exist")))?;
        f(c)
    }

    /// Pauses or resumes container `id` with `op` (under its state lock) and records
    /// `status` for its init process.
    fn freeze(
        &self,
        id: &str,
        op: fn(
            &husk_runtime::state::ContainerDir,
            &mut husk_runtime::state::ContainerRecord,
        ) -> anyhow::Result<()>,
        status: Status,
    ) -> TtrpcResult<()> {
        let dir = self.with_container(id, |c| {
            if c.member.is_some() {
                // The VM is the pod's: freezing it would freeze every container of the pod.
                return Err(unimplemented("Pause and Resume of one container of a pod"));
            }
            Ok(c.dir.clone())
        })?;
        dir.lock()
            .and_then(|_lock| {
                let mut rec = dir.load()?;
                op(&dir, &mut rec)
            })
            .map_err(to_ttrpc)?;
        self.with_container(id, |c| {
            c.init.status = status;
            Ok(())
        })
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<i32> {
        // The exec child is spawned without the lock: it waits for the guest.
        let (globals, plan, paths) = self.with_container(id, |c| {
            let rec = c.dir.load().map_err(to_ttrpc)?;
            let p = c
                .execs
                .get(exec_id)
                .ok_or_else(|| not_found(format!("exec {exec_id:?} does not exist")))?;
            if p.pid != 0 {
                return Err(precondition(format!(
                    "exec {exec_id:?} was already started"
                )));
            }
            let agent = rec
                .husk
                .agent
                .clone()
                .ok_or_else(|| precondition("the container has no agent".into()))?;
            Ok((
                c.globals.clone(),
                ExecPlan {
                    container_id: id.to_owned(),
                    sandbox_dir: c.dir.jail(),
                    agent,
                    process: p.spec.clone().unwrap_or_default(),
                    console_socket: None,
                    terminal: p.paths.terminal,
                },
                p.paths.clone(),
            ))
        })?;
        let (mut stdio, child) = paths.open(&self.inner.state_root).map_err(to_ttrpc)?;
        let plan = ExecPlan {
            console_socket: stdio.console_socket(),
            ..plan
        };
        let pid = spawn_detached(&globals, &plan, Some(child)).map_err(to_ttrpc)?;
        if let Err(e) = stdio.attach_terminal(&paths) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(to_ttrpc(e));
        }
        let mut tasks = self.tasks();
        if let Some(p) = tasks
            .containers
            .get_mut(id)
            .and_then(|c| c.execs.get_mut(exec_id))
        {
            p.pid = pid;
            p.status = Status::RUNNING;
            p.stdio = Some(stdio);
        }
        self.started(&mut tasks, pid);
        Ok(pid)
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        log::info!("create {}", req.id);
        let pid = self.do_create(&req).map_err(to_ttrpc)?;
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            checkpoint: req.checkpoint.clone(),
            pid: pid as u32,
            ..Default::default()
        });
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        log::info!("start {} {}", req.id, req.exec_id);
        if !req.exec_id.is_empty() {
            let pid = self.start_exec(&req.id, &req.exec_id)?;
            self.publish(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            });
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        let (dir, pid, member) = self.with_container(&req.id, |c| {
            Ok((c.dir.clone(), c.init.pid, c.member.clone()))
        })?;
        // Without the shim's lock: start waits for the guest.
        let started = match member {
            Some(m) => m.start(),
            None => dir.lock().and_then(|_lock| {
                let mut rec = dir.load()?;
                husk_runtime::container::start::start(&dir, &mut rec)
            }),
        };
        started.map_err(to_ttrpc)?;
        self.with_container(&req.id, |c| {
            c.init.status = Status::RUNNING;
            Ok(())
        })?;
        self.publish(TaskStart {
            container_id: req.id.clone(),
            pid: pid as u32,
            ..Default::default()
        });
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with_container(&req.id, |c| {
            let p = if req.exec_id.is_empty() {
                &c.init
            } else {
                c.execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(format!("exec {:?} does not exist", req.exec_id)))?
            };
            let exit = p.exit.get();
            Ok(api::StateResponse {
                id: req.id.clone(),
                bundle: c.bundle.to_string_lossy().into_owned(),
                pid: p.pid as u32,
                status: p.status().into(),
                stdin: p.paths.stdin.clone(),
                stdout: p.paths.stdout.clone(),
                stderr: p.paths.stderr.clone(),
                terminal: p.paths.terminal,
                exit_status: exit.as_ref().map_or(0, |e| e.status),
                exited_at: MessageField::from_option(exit.map(|e| e.at)),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        log::info!("kill {} {} signal {}", req.id, req.exec_id, req.signal);
        let signal = i32::try_from(req.signal).map_err(|_| invalid("bad signal".into()))?;
        if !req.exec_id.is_empty() {
            let pid = self.with_container(&req.id, |c| {
                let p = c
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(format!("exec {:?} does not exist", req.exec_id)))?;
                if p.pid == 0 || p.exit.get().is_some() {
                    return Err(already_finished());
                }
                Ok(p.pid)
            })?;
            // The exec child passes signals on to the guest process; for SIGKILL the
            // sandbox kills the guest process when it sees the child gone.
            let sig = nix::sys::signal::Signal::try_from(signal)
                .map_err(|_| invalid(format!("unknown signal {signal}")))?;
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .map_err(|e| to_ttrpc(anyhow::anyhow!("signalling the exec: {e}")))?;
            return Ok(Empty::new());
        }
        let (dir, member) = self.with_container(&req.id, |c| {
            if c.init.exit.get().is_some() {
                return Err(already_finished());
            }
            Ok((c.dir.clone(), c.member.clone()))
        })?;
        let result = match member {
            Some(m) => m.signal(signal, req.all),
            None => dir.lock().and_then(|_lock| {
                let rec = dir.load()?;
                husk_runtime::container::kill::kill(&dir, &rec, signal, req.all)
            }),
        };
        match result {
            Ok(()) => Ok(Empty::new()),
            Err(e) if e.to_string().contains("is not running") => Err(already_finished()),
            Err(e) => Err(to_ttrpc(e)),
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        log::info!("delete {} {}", req.id, req.exec_id);
        if !req.exec_id.is_empty() {
            return self.with_container(&req.id, |c| {
                let p = c
                    .execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(format!("exec {:?} does not exist", req.exec_id)))?;
                if p.pid != 0 && p.exit.get().is_none() {
                    return Err(precondition(format!(
                        "exec {:?} is still running",
                        req.exec_id
                    )));
                }
                let p = c.execs.remove(&req.exec_id).expect("checked above");
                let exit = p.exit.get();
                Ok(api::DeleteResponse {
                    pid: p.pid as u32,
                    exit_status: exit.as_ref().map_or(0, |e| e.status),
                    exited_at: MessageField::from_option(exit.map(|e| e.at)),
                    ..Default::default()
                })
            });
        }
        let (dir, running, member) = self.with_container(&req.id, |c| {
            Ok((c.dir.clone(), c.init.exit.get().is_none(), c.member.clone()))
        })?;
        // containerd deletes a task after it exited, or a created task it never started
        // (which is killed, as runc does).
        let result = match member {
            Some(m) => m.remove(),
            None => dir.lock().and_then(|_lock| {
                let rec = dir.load()?;
                husk_runtime::container::delete::delete(&dir, &rec, running)
            }),
        };
        result.map_err(to_ttrpc)?;
        let mut c = {
            let mut tasks = self.tasks();
            tasks
                .containers
                .remove(&req.id)
                .ok_or_else(|| not_found(format!("container {:?} does not exist", req.id)))?
        };
        if let Some(stdio) = c.init.stdio.as_mut() {
            stdio.finish(Duration::from_secs(1));
        }
        if c.rootfs_mounted {
            rootfs::unmount(&c.bundle);
        }
        // A sandbox killed here is reaped by now or soon: report what is known.
        let exit = c
            .init
            .exit
            .get()
            .unwrap_or_else(|| c.init.exit.wait_timeout_or(Duration::from_secs(5), 137));
        self.publish(TaskDelete {
            container_id: req.id.clone(),
            pid: c.init.pid as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            id: req.id.clone(),
            ..Default::default()
        });
        Ok(api::DeleteResponse {
            pid: c.init.pid as u32,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let (dir, member) =
            self.with_container(&req.id, |c| Ok((c.dir.clone(), c.member.clone())))?;
        let pids = match member {
            Some(m) => m.pids(),
            None => dir
                .load()
                .and_then(|rec| husk_runtime::container::ps::pids(&dir, &rec)),
        }
        .map_err(to_ttrpc)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.freeze(
            &req.id,
            husk_runtime::container::pause::pause,
            Status::PAUSED,
        )?;
        self.publish(TaskPaused {
            container_id: req.id.clone(),
            ..Default::default()
        });
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.freeze(
            &req.id,
            husk_runtime::container::pause::resume,
            Status::RUNNING,
        )?;
        self.publish(TaskResumed {
            container_id: req.id.clone(),
            ..Default::default()
        });
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        log::info!("exec {} {}", req.id, req.exec_id);
        let spec: serde_json::Value = match req.spec.as_ref() {
            Some(any) => serde_json::from_slice(&any.value)
                .map_err(|e| invalid(format!("the exec's process spec is not valid JSON: {e}")))?,
            None => return Err(invalid("the exec has no process spec".into())),
        };
        self.with_container(&req.id, |c| {
            if c.init.exit.get().is_some() {
                return Err(precondition(format!("container {:?} has stopped", req.id)));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(containerd_shim::protos::ttrpc::Error::RpcStatus(
                    containerd_shim::protos::ttrpc::get_status(
                        containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                        format!("exec {:?} already exists", req.exec_id),
                    ),
                ));
            }
            let mut p = Process::new(StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            p.spec = Some(spec);
            c.execs.insert(req.exec_id.clone(), p);
            Ok(())
        })?;
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        self.with_container(&req.id, |c| {
            if let (Some(m), true) = (&c.member, req.exec_id.is_empty()) {
                let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                return m
                    .resize(clamp(req.height), clamp(req.width))
                    .map_err(to_ttrpc);
            }
            let p = if req.exec_id.is_empty() {
                &c.init
            } else {
                c.execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(format!("exec {:?} does not exist", req.exec_id)))?
            };
            match &p.stdio {
                Some(s) => s.resize(req.width, req.height).map_err(to_ttrpc),
                None => Err(precondition("the process has not started".into())),
            }
        })?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        self.with_container(&req.id, |c| {
            let p = if req.exec_id.is_empty() {
                &c.init
            } else {
                c.execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(format!("exec {:?} does not exist", req.exec_id)))?
            };
            if let Some(s) = &p.stdio {
                s.close_stdin();
            }
            Ok(())
        })?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let cell = self.with_container(&req.id, |c| {
            if req.exec_id.is_empty() {
                Ok(c.init.exit.clone())
            } else {
                c.execs
                    .get(&req.exec_id)
                    .map(|p| p.exit.clone())
                    .ok_or_else(|| not_found(format!("exec {:?} does not exist", req.exec_id)))
            }
        })?;
        let exit = cell.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .tasks()
            .containers
            .get(&req.id)
            .map_or(0, |c| c.init.pid as u32);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let dir = self.with_container(&req.id, |c| Ok(c.dir.clone()))?;
        let agent = dir
            .load()
            .ok()
            .and_then(|rec| rec.husk.agent)
            .ok_or_else(|| precondition(format!("container {:?} has no running VM", req.id)))?;
        let any = crate::stats::metrics(&agent, &req.id).map_err(to_ttrpc)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn update(&self, _ctx: &TtrpcContext, _req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        Err(unimplemented(
            "Update (resources are fixed when the microVM boots)",
        ))
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(unimplemented("Checkpoint"))
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        if self.tasks().containers.is_empty() {
            self.inner.exit.signal();
        }
        Ok(Empty::new())
    }
}

/// Whether `dir` names a container this shim's state root holds (for `delete` after the
/// shim died).
pub fn state_dir(state_root: &Path, id: &str) -> anyhow::Result<ContainerDir> {
    ContainerDir::new(state_root, id).context("the container id")
}
