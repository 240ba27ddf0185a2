//! Probing whether a user-mode SYSCALL reaches the guest kernel at CPL 0. On the project's
//! kvm_pvm it does not for a stock kernel: the vCPU jumps to LSTAR but stays in user mode
//! (PVM expects PVM-aware guests), so a stock Linux's first system call from user space
//! faults at `entry_SYSCALL_64`. Nothing exits to the VMM there, so ttvm cannot repair it;
//! `ttvm doctor` says so, and tests know what to expect.
//!
//! The scratch VM is in long mode with one 2 MiB user-accessible page at 0: CPL-3 code runs
//! `syscall`; LSTAR points at a `hlt`. A HLT exit means the kernel side ran at CPL 0; a
//! `hlt` at CPL 3 raises #GP, and with no IDT the vCPU shuts down.

use kvm_bindings::{kvm_msr_entry, kvm_segment, Msrs};
use kvm_ioctls::Kvm;
use vm_memory::{Bytes, GuestAddress};

use crate::host::step_probe::{ProbeError, ScratchVm};
use crate::machine::vcpu::Exit;

const RAM: usize = 0x8000;
const PML4: u64 = 0x0;
const PDPT: u64 = 0x1000;
const PD: u64 = 0x2000;
const USER_CODE: u64 = 0x3000;
const KERNEL_ENTRY: u64 = 0x3100;
const USER_STACK: u64 = 0x5000;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_FMASK: u32 = 0xc000_0084;
/// SYSCALL loads CS = STAR[47:32] (this selector) and SS = CS + 8.
const KERNEL_CS: u64 = 0x08;

fn segment(selector: u16, type_: u8, dpl: u8, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// `Ok(Ok(()))` if SYSCALL from CPL 3 enters CPL 0 at LSTAR; `Ok(Err(what happened))` if not.
pub fn probe(kvm: &Kvm) -> Result<Result<(), String>, ProbeError> {
    let scratch = ScratchVm::with_ram(kvm, &[], RAM)?;
    let write = |value: &[u8], at: u64| {
        scratch
            .mem
            .write_slice(value, GuestAddress(at))
            .map_err(|e| ProbeError::Memory(e.to_string()))
    };
    // Present | writable | user; the PD entry maps a 2 MiB page at 0.
    write(&(PDPT | 7).to_le_bytes(), PML4)?;
    write(&(PD | 7).to_le_bytes(), PDPT)?;
    write(&0x87u64.to_le_bytes(), PD)?;
    write(&[0x0f, 0x05, 0xf4], USER_CODE)?; // syscall; hlt (never reached)
    write(&[0xf4], KERNEL_ENTRY)?; // hlt
    let vcpu = &scratch.vcpu;
    let mut sregs = vcpu.sregs()?;
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8000_0001 | (1 << 16); // PG | PE | WP
    sregs.efer = (1 << 8) | (1 << 10) | 1; // LME | LMA | SCE
    sregs.cs = segment(0x33, 0xb, 3, true);
    let data = segment(0x2b, 0x3, 3, false);
    (sregs.ss, sregs.ds, sregs.es, sregs.fs, sregs.gs) = (data, data, data, data, data);
    sregs.tr = kvm_segment {
        limit: 0x67,
        selector: 0x40,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    vcpu.set_sregs(&sregs)?;
    let msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: MSR_STAR,
            data: KERNEL_CS << 32,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_LSTAR,
            data: KERNEL_ENTRY,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_FMASK,
            data: 0x200,
            ..Default::default()
        },
    ])
    .map_err(|e| ProbeError::Memory(format!("{e:?}")))?;
    match vcpu.fd().set_msrs(&msrs) {
        Ok(3) => {}
        Ok(n) => return Ok(Err(format!("KVM took {n} of the 3 SYSCALL MSRs"))),
        Err(e) => return Ok(Err(format!("KVM_SET_MSRS: {e}"))),
    }
    let mut regs = vcpu.regs()?;
    regs.rip = USER_CODE;
    regs.rsp = USER_STACK;
    regs.rflags = 0x202;
    vcpu.set_regs(&regs)?;
    let mut vcpu = scratch.vcpu;
    for _ in 0..4 {
        match vcpu.run()? {
            Exit::Interrupted => continue,
            Exit::Hlt => {
                let (regs, sregs) = (vcpu.regs()?, vcpu.sregs()?);
                return Ok(if sregs.cs.dpl == 0 && regs.rip == KERNEL_ENTRY + 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "halted at RIP {:#x} with CPL {} after SYSCALL",
                        regs.rip, sregs.cs.dpl
                    ))
                });
            }
            other => {
                let rip = vcpu.regs().map(|r| r.rip).unwrap_or(0);
                return Ok(Err(format!(
                    "SYSCALL from CPL 3 did not enter the kernel at CPL 0: {other:?} at RIP {rip:#x}"
                )));
            }
        }
    }
    Ok(Err("no exit after SYSCALL".to_string()))
}
