//! Machine checkpoints: the vCPU, every device, the stepped run's clock state and guest
//! memory (full, or the pages changed since a parent checkpoint), taken between two steps
//! and restored into the same machine or a fresh one built from the same image.
//!
//! A snapshot is only taken at a *fresh* position (nothing has happened there yet), so a
//! restored machine continues exactly as the original did from that position.
//!
//! Encoding: magic `TTVMSNAP`, u32 format version, u32 length of a JSON document (the
//! machine state and the parent's id), the JSON, then the page set (see `pages`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::machine::devices::DevicesState;
use crate::machine::pages::{self, Page, PageSet, PagesError};
use crate::machine::vcpu_state::{self, VcpuState, VcpuStateError};
use crate::machine::Machine;
use crate::run::singlestep::{Position, SteppedState};

const MAGIC: &[u8; 8] = b"TTVMSNAP";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("no stepped run to checkpoint (checkpoints exist only under the step clock)")]
    NotStepping,
    #[error(
        "the machine is in the middle of position {0}; checkpoints are taken between positions"
    )]
    NotFresh(Position),
    #[error(transparent)]
    Vcpu(#[from] VcpuStateError),
    #[error(transparent)]
    Pages(#[from] PagesError),
    #[error(transparent)]
    Arm(#[from] crate::machine::vcpu::VcpuError),
    #[error("restoring the devices failed: {0}")]
    Devices(String),
    #[error("the snapshot is damaged: {0}")]
    Decode(String),
    #[error("the snapshot was made for {snap} bytes of RAM; this machine has {here}")]
    RamSize { snap: u64, here: u64 },
}

/// Everything of a machine at a position except guest memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    pub position: Position,
    pub mem_bytes: u64,
    pub vcpu: VcpuState,
    pub devices: DevicesState,
    pub(crate) stepped: SteppedState,
    pub boot_wall_clock_ns: u64,
    /// The driver's place at this position (for a trace: the index of the first event at
    /// or after it).
    pub cursor: u64,
}

/// A machine state with its memory: full, or the pages changed since `parent`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub state: MachineState,
    /// The snapshot this one's memory delta applies to (an id chosen by the store).
    pub parent: Option<u32>,
    pub memory: PageSet,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    state: MachineState,
    parent: Option<u32>,
}

impl Snapshot {
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let meta = serde_json::to_vec(&Meta {
            state: self.state.clone(),
            parent: self.parent,
        })
        .map_err(|e| SnapshotError::Decode(e.to_string()))?;
        let mut out = Vec::with_capacity(16 + meta.len() + self.memory.data_bytes() + 64);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        self.memory.encode(&mut out);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        let bad = |s: &str| SnapshotError::Decode(s.to_string());
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(bad("not a ttvm machine snapshot (bad magic)"));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
        if version != VERSION {
            return Err(SnapshotError::Decode(format!(
                "snapshot format {version}; this ttvm reads format {VERSION}"
            )));
        }
        let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap_or_default()) as usize;
        let meta = bytes
            .get(16..16 + len)
            .ok_or_else(|| bad("truncated state"))?;
        let meta: Meta =
            serde_json::from_slice(meta).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        let (memory, used) = PageSet::decode(&bytes[16 + len..])?;
        if 16 + len + used != bytes.len() {
            return Err(bad("trailing bytes after the page data"));
        }
        Ok(Snapshot {
            state: meta.state,
            parent: meta.parent,
            memory,
        })
    }
}

impl Machine {
    /// The machine's state at the current (fresh) position of its stepped run; `cursor`
    /// is the driver's place, stored with it.
    pub fn save_state(&mut self, cursor: u64) -> Result<MachineState, SnapshotError> {
        let stepped = self.stepped.as_ref().ok_or(SnapshotError::NotStepping)?;
        if !stepped.fresh && !stepped.ended {
            return Err(SnapshotError::NotFresh(self.position));
        }
        let mut stepped = stepped.clone();
        // The readiness the loop would read from the last exit's kvm_run: resolved now,
        // because a restored machine's kvm_run holds another exit's values.
        if stepped.st.ready_override.is_none() {
            stepped.st.ready_override = Some(self.vcpu.ready_for_interrupt());
        }
        if self.saveable_msrs.is_none() {
            self.saveable_msrs = Some(vcpu_state::saveable_msrs(&self._kvm)?);
        }
        let msrs = self.saveable_msrs.as_deref().unwrap_or_default();
        Ok(MachineState {
            position: self.position,
            mem_bytes: self.config.mem_bytes,
            vcpu: VcpuState::save(self.vcpu.fd(), msrs)?,
            devices: self.devices.state(),
            stepped,
            boot_wall_clock_ns: self.boot_wall_clock_ns,
            cursor,
        })
    }

    /// The pages written since the last call (by the guest, per KVM's dirty log, and by
    /// the VMM itself), which also starts a new interval.
    pub fn take_dirty_pages(&mut self) -> Result<BTreeSet<u32>, SnapshotError> {
        let mut set: BTreeSet<u32> = pages::take_dirty_pages(&self.vm, &self.mem)?
            .into_iter()
            .collect();
        set.append(&mut self.vmm_dirty);
        Ok(set)
    }

    /// Records that the VMM wrote `len` bytes of guest RAM at `gpa` (device DMA).
    pub fn note_vmm_write(&mut self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = (gpa >> 12) as u32;
        let last = ((gpa + len - 1) >> 12) as u32;
        self.vmm_dirty.extend(first..=last);
    }

    /// Every non-zero page of RAM.
    pub fn capture_all_pages(&self) -> Result<PageSet, SnapshotError> {
        Ok(PageSet::capture_full(&self.mem)?)
    }

    /// The current content of `pages`.
    pub fn capture_pages(
        &self,
        pages: impl IntoIterator<Item = u32>,
    ) -> Result<PageSet, SnapshotError> {
        Ok(PageSet::capture(&self.mem, pages)?)
    }

    /// The number of guest pages.
    pub fn page_count(&self) -> u32 {
        pages::page_count(&self.mem)
    }

    /// Writes guest pages (a restore's memory part). The pages do not count as dirty.
    pub fn write_pages<'a>(
        &mut self,
        pages: impl IntoIterator<Item = (u32, &'a Page)>,
    ) -> Result<(), SnapshotError> {
        for (n, page) in pages {
            pages::write_page(&self.mem, n, page)?;
        }
        Ok(())
    }

    /// Puts the vCPU, the devices and the stepped run back to `state` (memory is written
    /// separately with `write_pages`). The serial output keeps going to the same place.
    pub fn restore_state(&mut self, state: &MachineState) -> Result<(), SnapshotError> {
        if state.mem_bytes != self.config.mem_bytes {
            return Err(SnapshotError::RamSize {
                snap: state.mem_bytes,
                here: self.config.mem_bytes,
            });
        }
        self.devices
            .restore_in_place(&state.devices)
            .map_err(|e| SnapshotError::Devices(e.to_string()))?;
        state.vcpu.restore(self.vcpu.fd())?;
        // Re-arm single-stepping after the registers are set (real KVM re-arms the trap
        // only while RIP equals the RIP at KVM_SET_GUEST_DEBUG).
        self.vcpu.set_single_step(true)?;
        self.vcpu.enable_sync_regs();
        self.stepped = Some(state.stepped.clone());
        self.boot_wall_clock_ns = state.boot_wall_clock_ns;
        self.position = state.position;
        self.now_ns = state.stepped.now_ns();
        self.pending_end = None;
        Ok(())
    }
}
