//! The machine: one KVM VM with one vCPU, guest RAM, the PC devices on their bus.
//! Construction is here; running it is in [`crate::run`].
//!
//! Its parts: the vCPU ([`vcpu`], its saved state [`vcpu_state`]), guest RAM ([`memory`],
//! by pages for checkpoints [`pages`], virtual addresses [`paging`]), loading and booting
//! ([`elf_image`], [`boot`]), the devices ([`devices`]), the CPUID template ([`cpuid`]),
//! the next instruction ([`decode`]), instructions KVM cannot emulate ([`fallback`], run
//! by the machine in `unemulated`), register digests ([`digest`]) and checkpoints
//! ([`snapshot`]).

pub mod boot;
pub mod cpuid;
pub mod decode;
pub mod devices;
pub mod digest;
pub mod elf_image;
pub mod fallback;
pub mod memory;
pub mod pages;
pub mod paging;
pub mod snapshot;
mod unemulated;
pub mod vcpu;
pub mod vcpu_state;

use std::path::PathBuf;

use kvm_ioctls::{Kvm, VmFd};

use crate::host::kvm::{self as kvm_host, KvmHostError, RUN_REQUIREMENTS};
use crate::machine::boot::BootError;
use crate::machine::cpuid::{CpuidEntry, CpuidError};
use crate::machine::devices::debug_exit::DebugExit;
use crate::machine::devices::i8042::I8042;
use crate::machine::devices::pic::{Chip, PicPair, PicPort};
use crate::machine::devices::pit::{Pit, PortB};
use crate::machine::devices::rtc::Rtc;
use crate::machine::devices::serial::{SerialDevice, SerialError, SerialOutput, COM1_BASE};
use crate::machine::devices::{
    bus::BusError, DeviceCtx, DeviceId, DevicesState, MachineRequest, PioBus, PioDevice, PostPort,
};
use crate::machine::elf_image::{ElfImage, ImageError};
use crate::machine::memory::{GuestRam, MemoryError};
use crate::machine::vcpu::{Vcpu, VcpuError};
use crate::run::end::RunEnd;
use crate::run::kick::KickError;

/// Where KVM's TSS for real-mode emulation goes on Intel hosts (three pages just below the
/// BIOS area at 4 GiB, outside RAM, as Firecracker and QEMU place it).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// What to build.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub mem_bytes: u64,
    pub cmdline: String,
    pub kvm_device: PathBuf,
    /// The guest's CPUID table; None derives it from this host (see `cpuid`). Replay passes
    /// the recorded one so the guest sees the same CPU.
    pub cpuid: Option<Vec<CpuidEntry>>,
    /// An initial RAM disk, handed to the guest as the PVH start info's first module.
    pub initrd: Option<Initrd>,
}

/// An initrd: its name (for traces and messages) and its bytes (shared, so configs stay
/// cheap to clone).
#[derive(Clone, PartialEq, Eq)]
pub struct Initrd {
    pub name: String,
    pub bytes: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for Initrd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Initrd({}, {} bytes)", self.name, self.bytes.len())
    }
}

/// The largest initrd ttvm reads (guest RAM is at most this large too).
pub const INITRD_MAX: u64 = 1 << 30;

impl Initrd {
    /// Reads the initrd file at `path`: a regular file of at most [`INITRD_MAX`] bytes.
    pub fn load(path: &std::path::Path) -> Result<Initrd, String> {
        use std::io::Read;
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("{shown}: not a regular file"));
        }
        if meta.len() > INITRD_MAX {
            return Err(format!(
                "{shown}: {} bytes; an initrd may have at most {INITRD_MAX}",
                meta.len()
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::fs::File::open(path)
            .and_then(|f| f.take(INITRD_MAX + 1).read_to_end(&mut bytes))
            .map_err(|e| format!("{shown}: {e}"))?;
        let name = path.file_name().map_or_else(
            || "initrd".to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        Ok(Initrd {
            name,
            bytes: bytes.into(),
        })
    }
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            mem_bytes: memory::DEFAULT_MEM,
            cmdline: String::new(),
            kvm_device: kvm_host::kvm_device_path(),
            cpuid: None,
            initrd: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Kvm(#[from] KvmHostError),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_CREATE_VCPU failed: {0}")]
    CreateVcpu(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    SetTssAddr(kvm_ioctls::Error),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Cpuid(#[from] CpuidError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Kick(#[from] KickError),
    #[error(transparent)]
    Serial(#[from] SerialError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("unexpected KVM exit: {0}")]
    UnexpectedExit(String),
    #[error(transparent)]
    Probe(#[from] crate::host::step_probe::ProbeError),
    #[error(
        "the guest entered user mode (CPL 3) at RIP {rip:#x}, position {position}, and this \
         KVM cannot single-step user-mode code (`ttvm doctor` shows it): the single-step clock \
         stops here rather than record wrong positions. On this host record kernel-mode \
         workloads only (e.g. a kernel without an init); a KVM with hardware virtualization \
         steps user mode"
    )]
    UserModeNotSteppable { rip: u64, position: u64 },
}

/// The PC devices, owned concretely so their states can be saved and restored as one.
pub struct Devices {
    pub pic: PicPair,
    pub pit: Pit,
    pub rtc: Rtc,
    pub serial: SerialDevice,
    pub i8042: I8042,
}

impl Devices {
    pub fn new(mem_bytes: u64, serial_out: SerialOutput) -> Self {
        Devices {
            pic: PicPair::new(),
            pit: Pit::new(),
            rtc: Rtc::new(mem_bytes),
            serial: SerialDevice::new(serial_out),
            i8042: I8042::default(),
        }
    }

    /// Guest time of the next timer interrupt (PIT channel 0 or the RTC), if any.
    pub fn next_timer_deadline_ns(&self) -> Option<u64> {
        [self.pit.next_deadline_ns(), self.rtc.next_deadline_ns()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Raises the timer interrupts due by `ctx.now_ns`.
    pub fn poll_timers(&mut self, ctx: &mut DeviceCtx) {
        self.pit.poll(ctx);
        self.rtc.poll(ctx);
    }

    /// The standard PC port map.
    pub fn standard_bus() -> Result<PioBus, BusError> {
        let mut bus = PioBus::new();
        for (base, len, id) in [
            (0x20, 2, DeviceId::PicMaster),
            (0xa0, 2, DeviceId::PicSlave),
            (0x40, 4, DeviceId::Pit),
            (0x61, 1, DeviceId::PortB),
            (0x60, 1, DeviceId::I8042Data),
            (0x64, 1, DeviceId::I8042Command),
            (0x70, 2, DeviceId::Rtc),
            (0x80, 1, DeviceId::Post),
            (0xf4, 4, DeviceId::DebugExit),
            (COM1_BASE, 8, DeviceId::Serial),
        ] {
            bus.insert(base, len, id)?;
        }
        Ok(bus)
    }

    /// Runs `f` on the device behind `id`, with the offset translated for split devices.
    fn with_device<R>(
        &mut self,
        id: DeviceId,
        offset: u16,
        f: impl FnOnce(&mut dyn PioDevice, u16) -> R,
    ) -> R {
        match id {
            DeviceId::PicMaster => f(
                &mut PicPort {
                    pair: &mut self.pic,
                    chip: Chip::Master,
                },
                offset,
            ),
            DeviceId::PicSlave => f(
                &mut PicPort {
                    pair: &mut self.pic,
                    chip: Chip::Slave,
                },
                offset,
            ),
            DeviceId::Pit => f(&mut self.pit, offset),
            DeviceId::PortB => f(&mut PortB(&mut self.pit), offset),
            DeviceId::Rtc => f(&mut self.rtc, offset),
            DeviceId::Serial => f(&mut self.serial, offset),
            DeviceId::I8042Data => f(&mut self.i8042, 0),
            DeviceId::I8042Command => f(&mut self.i8042, 4),
            DeviceId::DebugExit => f(&mut DebugExit, offset),
            DeviceId::Post => f(&mut PostPort, offset),
        }
    }

    pub fn read(&mut self, id: DeviceId, offset: u16, ctx: &mut DeviceCtx) -> u8 {
        self.with_device(id, offset, |d, o| d.read(o, ctx))
    }

    pub fn write(&mut self, id: DeviceId, offset: u16, value: u8, ctx: &mut DeviceCtx) {
        self.with_device(id, offset, |d, o| d.write(o, value, ctx))
    }

    pub fn state(&self) -> DevicesState {
        DevicesState {
            pic: self.pic.state().clone(),
            pit: self.pit.state().clone(),
            rtc: self.rtc.state().clone(),
            serial: self.serial.state(),
            i8042: self.i8042.state().clone(),
        }
    }

    /// Puts every device back to `state`; the serial output keeps its destination.
    pub fn restore_in_place(&mut self, state: &DevicesState) -> Result<(), SerialError> {
        let placeholder = SerialDevice::new(Box::new(std::io::sink()));
        let out = std::mem::replace(&mut self.serial, placeholder).into_output();
        *self = Devices::restore(state, out)?;
        Ok(())
    }

    pub fn restore(state: &DevicesState, serial_out: SerialOutput) -> Result<Self, SerialError> {
        Ok(Devices {
            pic: PicPair::from_state(state.pic.clone()),
            pit: Pit::from_state(state.pit.clone()),
            rtc: Rtc::from_state(state.rtc.clone()),
            serial: SerialDevice::from_state(&state.serial, serial_out)?,
            i8042: I8042::from_state(state.i8042.clone()),
        })
    }
}

/// Counters of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunStats {
    pub exits: u64,
    pub pio_exits: u64,
    pub mmio_exits: u64,
    pub hlt_exits: u64,
    pub kicks: u64,
    pub interrupts_injected: u64,
    /// Instructions KVM could not emulate that the VMM executed (`crate::machine::fallback`).
    pub executed_by_vmm: u64,
}

pub struct Machine {
    // Field order is drop order: the vCPU and VM go before the memory they map.
    pub(crate) vcpu: Vcpu,
    pub(crate) vm: VmFd,
    pub(crate) _kvm: Kvm,
    pub(crate) mem: GuestRam,
    pub(crate) bus: PioBus,
    pub(crate) devices: Devices,
    pub(crate) cpuid: Vec<CpuidEntry>,
    pub(crate) image: ElfImage,
    pub(crate) config: MachineConfig,
    pub(crate) boot_wall_clock_ns: u64,
    /// Guest time of the device accesses being handled.
    pub(crate) now_ns: u64,
    /// Current position of the stepped run (steps since boot).
    pub(crate) position: u64,
    /// How this KVM single-steps (probed when a stepped run starts).
    pub(crate) step_semantics: Option<crate::host::step_probe::StepSemantics>,
    pub(crate) pending_end: Option<RunEnd>,
    pub(crate) stats: RunStats,
    /// The stepped run's state between calls of its loop (None before it begins).
    pub(crate) stepped: Option<crate::run::singlestep::SteppedState>,
    /// Pages the VMM itself wrote since the last checkpoint (KVM's dirty log misses them).
    pub(crate) vmm_dirty: std::collections::BTreeSet<u32>,
    /// MSRs this KVM can save (probed on the first checkpoint).
    pub(crate) saveable_msrs: Option<Vec<u32>>,
}

impl Machine {
    /// Builds a machine ready to run `image` from its PVH entry point. Bad input (memory
    /// size, image) is reported before KVM is touched.
    /// The CPUID table a machine built from `config` would give its guest (without
    /// building one).
    pub fn guest_cpuid(config: &MachineConfig) -> Result<Vec<CpuidEntry>, MachineError> {
        match &config.cpuid {
            Some(table) => Ok(table.clone()),
            None => {
                let kvm = kvm_host::open_kvm(&config.kvm_device, RUN_REQUIREMENTS)?;
                Ok(cpuid::host_template(&kvm)?)
            }
        }
    }

    pub fn new(
        config: MachineConfig,
        image: &[u8],
        serial_out: SerialOutput,
    ) -> Result<Machine, MachineError> {
        memory::validate_size(config.mem_bytes)?;
        let elf = elf_image::parse(image, config.mem_bytes)?;
        if config.cmdline.len() >= boot::CMDLINE_MAX {
            return Err(BootError::CmdlineTooLong {
                len: config.cmdline.len(),
            }
            .into());
        }
        let initrd = match &config.initrd {
            Some(Initrd { bytes, .. }) => Some((
                &bytes[..],
                boot::initrd_address(config.mem_bytes, bytes.len() as u64, elf.end)?,
            )),
            None => None,
        };
        let kvm = kvm_host::open_kvm(&config.kvm_device, RUN_REQUIREMENTS)?;
        let vm = kvm.create_vm().map_err(MachineError::CreateVm)?;
        vm.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(MachineError::SetTssAddr)?;
        let mem = memory::allocate(config.mem_bytes)?;
        // Dirty logging for incremental checkpoints: it costs one write fault per page per
        // checkpoint interval, and nothing when no checkpoint is taken.
        memory::register(&vm, &mem, true)?;
        boot::load_image(&mem, image, &elf)?;
        boot::write_boot_info(&mem, config.mem_bytes, &config.cmdline, initrd)?;

        let cpuid = match &config.cpuid {
            Some(table) => table.clone(),
            None => cpuid::host_template(&kvm)?,
        };
        let vcpu = Vcpu::new(vm.create_vcpu(0).map_err(MachineError::CreateVcpu)?);
        vcpu.fd()
            .set_cpuid2(&cpuid::to_kvm(&cpuid)?)
            .map_err(VcpuError::SetCpuid)?;
        vcpu.set_sregs(&boot::pvh_sregs(vcpu.sregs()?))?;
        vcpu.set_regs(&boot::pvh_regs(elf.pvh_entry))?;
        vcpu.fd()
            .set_fpu(&boot::reset_fpu())
            .map_err(VcpuError::SetFpu)?;

        tracing::debug!(
            mem = config.mem_bytes,
            entry = format_args!("{:#x}", elf.pvh_entry),
            class = ?elf.class,
            "machine built"
        );
        Ok(Machine {
            vcpu,
            vm,
            _kvm: kvm,
            mem,
            bus: Devices::standard_bus()?,
            devices: Devices::new(config.mem_bytes, serial_out),
            cpuid,
            image: elf,
            config,
            boot_wall_clock_ns: 0,
            now_ns: 0,
            position: 0,
            step_semantics: None,
            pending_end: None,
            stats: RunStats::default(),
            stepped: None,
            vmm_dirty: Default::default(),
            saveable_msrs: None,
        })
    }

    /// How this KVM single-steps (probed once, in a scratch VM, then remembered).
    pub fn probe_step_semantics(
        &mut self,
    ) -> Result<crate::host::step_probe::StepSemantics, crate::host::step_probe::ProbeError> {
        if let Some(s) = self.step_semantics {
            return Ok(s);
        }
        let s = crate::host::step_probe::probe(&self._kvm)?;
        self.step_semantics = Some(s);
        Ok(s)
    }

    /// Steps since boot of the stepped run (0 before it starts).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Guest time (ns since boot) as of the current position.
    pub fn guest_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// The guest's CPUID table (for the trace header).
    pub fn cpuid(&self) -> &[CpuidEntry] {
        &self.cpuid
    }

    /// The loaded image's layout and entry point.
    pub fn image(&self) -> &ElfImage {
        &self.image
    }

    pub fn stats(&self) -> &RunStats {
        &self.stats
    }

    pub fn devices(&self) -> &Devices {
        &self.devices
    }

    pub fn memory(&self) -> &GuestRam {
        &self.mem
    }

    pub fn vm(&self) -> &VmFd {
        &self.vm
    }

    /// The x87/SSE state of the vCPU (for debuggers).
    pub fn fpu(&self) -> Result<kvm_bindings::kvm_fpu, VcpuError> {
        self.vcpu.fd().get_fpu().map_err(VcpuError::GetFpu)
    }

    /// One guest port read (a byte-wide access; wider ones are split by the caller).
    pub(crate) fn pio_read(&mut self, port: u16, ctx: &mut DeviceCtx) -> u8 {
        match self.bus.lookup(port) {
            Some((id, offset)) => self.devices.read(id, offset, ctx),
            None => {
                tracing::debug!(port = format_args!("{port:#x}"), "read from unknown port");
                0xff
            }
        }
    }

    pub(crate) fn pio_write(&mut self, port: u16, value: u8, ctx: &mut DeviceCtx) {
        match self.bus.lookup(port) {
            Some((id, offset)) => self.devices.write(id, offset, value, ctx),
            None => tracing::debug!(
                port = format_args!("{port:#x}"),
                value = format_args!("{value:#x}"),
                "write to unknown port ignored"
            ),
        }
    }

    /// Applies what device accesses caused: IRQ edges into the PICs, run ends.
    pub(crate) fn apply(&mut self, ctx: DeviceCtx, rip: impl FnOnce(&Self) -> u64) {
        if ctx.raised_irqs != 0 {
            self.devices.pic.raise_lines(ctx.raised_irqs);
        }
        if self.pending_end.is_none() {
            match ctx.request {
                Some(MachineRequest::Exit(status)) => {
                    self.pending_end = Some(RunEnd::GuestExit { status })
                }
                Some(MachineRequest::Reset) => {
                    self.pending_end = Some(RunEnd::Reset { rip: rip(self) })
                }
                None => {}
            }
        }
    }
}
