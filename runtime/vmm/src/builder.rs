//! Turns a [`VmConfig`] into a running VM.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{IoEventAddress, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::layout::{
    CMDLINE_MAX_SIZE, COM1_IRQ, IRQ_MAX, MAX_VCPUS, VIRTIO_IRQ_START,
};
use crate::arch::x86_64::{boot, mptable, regs};
use crate::control::{VmControl, VmExit};
use crate::device_manager::{DeviceLoop, MmioBus};
use crate::devices::legacy::serial::SerialConsole;
use crate::devices::legacy::PortIoBus;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::net::tap::{FrameIo, Tap};
use crate::devices::virtio::net::{Net, NetHandle, NetParams};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{DeviceNeeds, EventRegistrar, Interrupt, VirtioDevice};
use crate::seccomp::{self, RoleFilter, ThreadRole};
use crate::vstate::vcpu::{create_vcpus, install_kick_handler, kick_signal, Vcpu};
use crate::vstate::vm::{create_memory, create_vm, open_kvm};
use crate::{VmConfig, VmmError};

/// What husk always puts on the guest's command line. `reboot=k` makes a guest reboot or
/// poweroff reach the VMM as a keyboard-controller reset; `panic=1` turns a guest panic
/// into one too instead of a hung VM. The rest trims boot work a microVM does not need.
pub const BASE_CMDLINE: &str =
    "reboot=k panic=1 no_timer_check tsc=reliable rcupdate.rcu_expedited=1 cryptomgr.notests";

/// Smallest guest husk boots: the kernel is loaded at 16 MiB and needs room above it.
pub const MIN_MEM_MIB: u64 = 32;

fn validate(config: &VmConfig) -> Result<(), VmmError> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(VmmError::Config(format!(
            "{} vCPUs requested; husk supports 1 to {MAX_VCPUS}",
            config.vcpus
        )));
    }
    if config.mem_mib < MIN_MEM_MIB || config.mem_mib > (1 << 20) {
        return Err(VmmError::Config(format!(
            "{} MiB of memory requested; husk supports {MIN_MEM_MIB} MiB to 1 TiB",
            config.mem_mib
        )));
    }
    let devices = config.disks.len()
        + usize::from(config.vsock.is_some())
        + usize::from(config.fs.is_some())
        + config.nets.len();
    if devices > (IRQ_MAX - VIRTIO_IRQ_START + 1) as usize {
        return Err(VmmError::Config(format!(
            "{devices} devices requested; too many"
        )));
    }
    for (i, n) in config.nets.iter().enumerate() {
        if n.mac[0] & 1 != 0 || n.mac == [0; 6] {
            return Err(VmmError::Config(format!(
                "network device {i}: MAC {:02x?} is multicast or zero",
                n.mac
            )));
        }
        if config.nets[..i].iter().any(|o| o.mac == n.mac) {
            return Err(VmmError::Config(format!(
                "network devices share the MAC {:02x?}",
                n.mac
            )));
        }
        if n.mtu.is_some_and(|m| m < 68) {
            return Err(VmmError::Config(format!(
                "network device {i}: MTU {} is below 68",
                n.mtu.unwrap_or(0)
            )));
        }
    }
    if let Some(v) = &config.vsock {
        if v.guest_cid < 3 || v.guest_cid > u64::from(u32::MAX) {
            return Err(VmmError::Config(format!(
                "guest CID {} is reserved or too large",
                v.guest_cid
            )));
        }
    }
    Ok(())
}

fn setup<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> VmmError {
    move |e| VmmError::Setup(format!("{what}: {e}"))
}

/// A VM that is running.
pub struct RunningVm {
    control: Arc<VmControl>,
    watchdog: Option<JoinHandle<()>>,
    vcpus: Vec<JoinHandle<()>>,
    device_thread: Option<JoinHandle<()>>,
    device_stop: EventFd,
    // Dropped after the threads are joined: KVM must not run on unmapped memory.
    _mem: GuestMemoryMmap,
    _vm: VmFd,
    bus: Arc<MmioBus>,
    nets: Vec<NetHandle>,
}

impl RunningVm {
    /// Network device `index` (in [`VmConfig::nets`] order), to attach a tap to it.
    pub fn net(&self, index: usize) -> Option<&NetHandle> {
        self.nets.get(index)
    }

    /// Asks the VM to stop; [`RunningVm::wait`] then returns [`VmExit::Stopped`] unless
    /// the guest ended first.
    pub fn stop(&self) {
        self.control.finish(VmExit::Stopped);
    }

    /// Waits up to `timeout` for the VM to end. `None` means it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<VmExit> {
        let mut pfd = libc::pollfd {
            fd: self.control.exit_evt().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and we pass a
        // count of exactly one.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            self.control.exit_reason()
        } else {
            None
        }
    }

    /// Waits for the VM to end, stops every thread, and says why it ended.
    pub fn wait(mut self) -> VmExit {
        while self.control.exit_reason().is_none() {
            let _ = self.control.exit_evt().read();
        }
        self.shutdown();
        self.control
            .exit_reason()
            .unwrap_or_else(|| VmExit::Error("VM ended without a reason".into()))
    }

    /// Freezes the guest: every vCPU leaves KVM_RUN and parks until
    /// [`RunningVm::resume`]. Devices stay up (an idle guest gives them nothing to do).
    pub fn pause(&self) -> Result<(), VmmError> {
        self.control.request_pause();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // A kick can land just before a vCPU enters KVM_RUN; kick until all are parked.
        while !self
            .control
            .wait_parked(self.vcpus.len(), Duration::from_millis(5))
        {
            if self.control.should_stop() {
                return Err(VmmError::Setup("the VM stopped while pausing".into()));
            }
            if std::time::Instant::now() > deadline {
                self.control.resume();
                return Err(VmmError::Setup("vCPUs did not pause within 10 s".into()));
            }
            for h in self.vcpus.iter().filter(|h| !h.is_finished()) {
                let _ = h.kill(kick_signal());
            }
        }
        Ok(())
    }

    /// Thaws a paused guest.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Whether the guest is paused.
    pub fn is_paused(&self) -> bool {
        self.control.pause_requested()
    }

    /// The MMIO bus, to inspect devices.
    pub fn mmio_bus(&self) -> &Arc<MmioBus> {
        &self.bus
    }

    fn shutdown(&mut self) {
        self.control.finish(VmExit::Stopped);
        // The watchdog signals vCPU threads by pthread id: it must be gone before they are
        // joined.
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        // A vCPU may be inside KVM_RUN (or about to enter it): kick until it has left.
        while self.vcpus.iter().any(|h| !h.is_finished()) {
            for h in self.vcpus.iter().filter(|h| !h.is_finished()) {
                let _ = h.kill(kick_signal());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for h in self.vcpus.drain(..) {
            let _ = h.join();
        }
        let _ = self.device_stop.write(1);
        if let Some(h) = self.device_thread.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How often the halt watchdog looks at the vCPUs.
const HALT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Without ACPI a guest `poweroff` or `halt` ends with every vCPU in `hlt` with interrupts
/// off, inside KVM, where the VMM never hears of it. The watchdog kicks the vCPUs now and
/// then; each kicked vCPU checks whether it is halted for good (see
/// `VmControl::report_dead_halt`), so such a guest ends the VM instead of hanging it.
fn spawn_halt_watchdog(
    control: &Arc<VmControl>,
    vcpus: &[JoinHandle<()>],
    filter: Option<RoleFilter>,
) -> Result<JoinHandle<()>, VmmError> {
    use std::os::unix::thread::JoinHandleExt;
    let threads: Vec<libc::pthread_t> = vcpus.iter().map(|h| h.as_pthread_t()).collect();
    let control = control.clone();
    std::thread::Builder::new()
        .name("husk-watchdog".into())
        .spawn(move || {
            if !confine_thread(filter.as_ref(), &control) {
                return;
            }
            while control.wait_exit(HALT_CHECK_INTERVAL).is_none() {
                if control.pause_requested() {
                    continue;
                }
                for &t in &threads {
                    // SAFETY: the vCPU threads are joined only after this thread has been
                    // joined (RunningVm::shutdown), so every pthread_t here is still valid;
                    // the kick signal has a handler installed.
                    unsafe { libc::pthread_kill(t, kick_signal()) };
                }
            }
        })
        .map_err(setup("spawning the halt watchdog"))
}

/// A VM that is built (memory, kernel, devices, vCPUs configured, every file it needs
/// open) but not running: the moment to confine the process, before the guest runs.
pub struct BuiltVm {
    vcpus: Vec<Vcpu>,
    control: Arc<VmControl>,
    device_loop: DeviceLoop,
    device_stop: EventFd,
    pio: Arc<PortIoBus>,
    bus: Arc<MmioBus>,
    needs: DeviceNeeds,
    mem: GuestMemoryMmap,
    vm: VmFd,
    nets: Vec<NetHandle>,
}

/// Builds the VM described by `config` and starts it, each thread under its role's
/// seccomp filter when `config.seccomp` is set.
pub fn start_vm(config: &VmConfig) -> Result<RunningVm, VmmError> {
    let seccomp = config.seccomp;
    build_vm(config)?.start(seccomp)
}

/// Builds the VM described by `config` without running it.
pub fn build_vm(config: &VmConfig) -> Result<BuiltVm, VmmError> {
    validate(config)?;
    install_kick_handler().map_err(setup("installing the vCPU kick signal handler"))?;
    let kvm = open_kvm()?;
    let vm = create_vm(&kvm)?;
    let mem = create_memory(&vm, config.mem_mib)?;
    let mem_size = config.mem_mib << 20;

    let kernel = boot::load_kernel(&mem, &config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|p| boot::load_initrd(&mem, mem_size, kernel.end, p))
        .transpose()?;
    regs::write_boot_tables(&mem).map_err(setup("writing boot page tables"))?;
    mptable::write(&mem, config.vcpus)?;

    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(setup("command line"))?;
    cmdline
        .insert_str(BASE_CMDLINE)
        .map_err(setup("command line"))?;

    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let id = format!("husk-vd{}", (b'a' + i as u8) as char);
        devices.push(Box::new(Block::new(&disk.path, disk.read_only, &id)?));
    }
    if let Some(v) = &config.vsock {
        let dev = Vsock::new(v.guest_cid, v.uds_path.clone())
            .map_err(|e| VmmError::Setup(format!("vsock socket {}: {e}", v.uds_path.display())))?;
        devices.push(Box::new(dev));
    }
    attach_fs_device(config, &mut devices)?;
    let nets = attach_net_devices(config, &mut devices)?;

    let epoll = Arc::new(Epoll::new().map_err(setup("epoll"))?);
    let mut bus = MmioBus::default();
    let mut queue_evts = Vec::new();
    let mut work_evts = Vec::new();
    let mut needs = DeviceNeeds::default();
    for (i, device) in devices.into_iter().enumerate() {
        needs.merge(&device.confinement());
        let irq = VIRTIO_IRQ_START + i as u32;
        let base = MmioBus::window_base(i);
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(setup("eventfd"))?;
        vm.register_irqfd(&irqfd, irq).map_err(setup("KVM_IRQFD"))?;
        for q in 0..device.queue_max_sizes().len() as u32 {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(setup("eventfd"))?;
            vm.register_ioevent(&evt, &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET), q)
                .map_err(setup("KVM_IOEVENTFD"))?;
            queue_evts.push((i as u32, q, evt));
        }
        let mut transport = MmioTransport::new(
            device,
            mem.clone(),
            Arc::new(Interrupt::new(irqfd)),
            EventRegistrar::new(epoll.clone(), i as u32),
        );
        let work = EventFd::new(libc::EFD_NONBLOCK).map_err(setup("eventfd"))?;
        transport.set_work_eventfd(work.try_clone().map_err(setup("eventfd"))?);
        work_evts.push((i as u32, work));
        bus.add(Arc::new(Mutex::new(transport)));
        cmdline
            .add_virtio_mmio_device(MMIO_WINDOW_SIZE, GuestAddress(base), irq, None)
            .map_err(setup("command line"))?;
    }

    let serial = match &config.serial_log {
        Some(path) => {
            let mut console = SerialConsole::new(path)
                .map_err(|e| VmmError::Setup(format!("serial log {}: {e}", path.display())))?;
            if let Some(irq) = console.take_irq() {
                vm.register_irqfd(&irq, COM1_IRQ)
                    .map_err(setup("KVM_IRQFD"))?;
                // The irqfd stays registered for the VM's lifetime; keep the fd open.
                std::mem::forget(irq);
            }
            cmdline
                .insert_str("console=ttyS0")
                .map_err(setup("command line"))?;
            Some(console)
        }
        None => None,
    };
    if !config.extra_cmdline.is_empty() {
        cmdline
            .insert_str(&config.extra_cmdline)
            .map_err(setup("command line"))?;
    }
    boot::write_boot_params(&mem, mem_size, &cmdline, initrd)?;

    let vcpus = create_vcpus(&kvm, &vm, config.vcpus, kernel.entry)?;
    let control = Arc::new(VmControl::new(usize::from(config.vcpus)).map_err(setup("eventfd"))?);
    let bus = Arc::new(bus);
    let mut device_loop = DeviceLoop::new(epoll, bus.clone()).map_err(setup("device loop"))?;
    for (dev, q, evt) in queue_evts {
        device_loop
            .add_queue_evt(dev, q, evt)
            .map_err(setup("device loop"))?;
    }
    for (dev, evt) in work_evts {
        device_loop
            .add_work_evt(dev, evt)
            .map_err(setup("device loop"))?;
    }
    let device_stop = device_loop.stop_handle().map_err(setup("eventfd"))?;
    Ok(BuiltVm {
        vcpus,
        control,
        device_loop,
        device_stop,
        pio: Arc::new(PortIoBus::new(serial)),
        bus,
        needs,
        mem,
        vm,
        nets,
    })
}

/// Adds the virtio-fs device, if the VM shares a directory. Its request thread starts here,
/// with the VMM's other setup threads.
fn attach_fs_device(
    config: &VmConfig,
    devices: &mut Vec<Box<dyn VirtioDevice>>,
) -> Result<(), VmmError> {
    if let Some(fs) = &config.fs {
        devices.push(Box::new(Fs::new(fs)?));
    }
    Ok(())
}

/// Adds the virtio-net devices; each one's handle attaches a tap later if it has none.
fn attach_net_devices(
    config: &VmConfig,
    devices: &mut Vec<Box<dyn VirtioDevice>>,
) -> Result<Vec<NetHandle>, VmmError> {
    let mut handles = Vec::new();
    for (i, n) in config.nets.iter().enumerate() {
        let backend = match &n.tap {
            Some(fd) => {
                let fd = fd
                    .try_clone()
                    .map_err(setup("duplicating a tap descriptor"))?;
                let tap = Tap::from_fd(fd)
                    .map_err(|e| VmmError::Setup(format!("network device {i}: {e}")))?;
                Some(Box::new(tap) as Box<dyn FrameIo>)
            }
            None => None,
        };
        let (dev, handle) = Net::new(NetParams {
            mac: n.mac,
            mtu: n.mtu,
            backend,
        })
        .map_err(setup("network device"))?;
        devices.push(Box::new(dev));
        handles.push(handle);
    }
    Ok(handles)
}

/// The seccomp filters of a VM's threads.
struct VmFilters {
    vcpu: RoleFilter,
    device: RoleFilter,
    watchdog: RoleFilter,
}

impl VmFilters {
    fn compile(needs: &DeviceNeeds) -> Result<Self, VmmError> {
        let mut device = seccomp::device::allowlist();
        device.merge(&needs.syscalls);
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        Ok(Self {
            vcpu: RoleFilter::compile(ThreadRole::Vcpu, &seccomp::vcpu::allowlist())
                .map_err(setup("seccomp"))?,
            device: RoleFilter::compile(ThreadRole::Device, &device).map_err(setup("seccomp"))?,
            watchdog: RoleFilter::compile(
                ThreadRole::Control,
                &seccomp::control::allowlist(pid, kick_signal()),
            )
            .map_err(setup("seccomp"))?,
        })
    }
}

/// Installs `filter` (if any) on the calling thread; if that fails the VM ends, since the
/// thread must not serve the guest unconfined.
fn confine_thread(filter: Option<&RoleFilter>, control: &VmControl) -> bool {
    match filter.map(RoleFilter::install).transpose() {
        Ok(_) => true,
        Err(e) => {
            control.finish(VmExit::Error(e.to_string()));
            false
        }
    }
}

impl BuiltVm {
    /// What the VM's devices need from the process's confinement.
    pub fn confinement_needs(&self) -> &DeviceNeeds {
        &self.needs
    }

    /// Starts the device thread, the vCPU threads and the halt watchdog. With `seccomp`,
    /// each first installs its role's filter (vCPU, device, control for the watchdog).
    pub fn start(self, seccomp: bool) -> Result<RunningVm, VmmError> {
        let filters = if seccomp {
            Some(Arc::new(VmFilters::compile(&self.needs)?))
        } else {
            None
        };
        let BuiltVm {
            vcpus,
            control,
            device_loop,
            device_stop,
            pio,
            bus,
            needs: _,
            mem,
            vm,
            nets,
        } = self;
        let device_thread = {
            let (control, filters) = (control.clone(), filters.clone());
            std::thread::Builder::new()
                .name("husk-devices".into())
                .spawn(move || {
                    if confine_thread(filters.as_ref().map(|f| &f.device), &control) {
                        device_loop.run(control);
                    }
                })
                .map_err(setup("spawning the device thread"))?
        };
        let mut handles = Vec::new();
        for (i, vcpu) in vcpus.into_iter().enumerate() {
            let (control, pio, bus) = (control.clone(), pio.clone(), bus.clone());
            let filters = filters.clone();
            let h = std::thread::Builder::new()
                .name(format!("husk-vcpu{i}"))
                .spawn(move || {
                    if confine_thread(filters.as_ref().map(|f| &f.vcpu), &control) {
                        let what = format!("vCPU {i}");
                        control
                            .clone()
                            .run_guarded(&what, || vcpu.run(control, pio, bus));
                    }
                })
                .map_err(setup("spawning a vCPU thread"))?;
            handles.push(h);
        }
        let watchdog = spawn_halt_watchdog(
            &control,
            &handles,
            filters.as_ref().map(|f| f.watchdog.clone()),
        )?;
        Ok(RunningVm {
            control,
            watchdog: Some(watchdog),
            vcpus: handles,
            device_thread: Some(device_thread),
            device_stop,
            _mem: mem,
            _vm: vm,
            bus,
            nets,
        })
    }
}
