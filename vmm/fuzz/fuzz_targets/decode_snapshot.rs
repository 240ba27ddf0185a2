//! Fuzzes the machine-snapshot decoder: the payload of a checkpoint file (the file's own
//! header, checksums and zstd frame are fuzzed by `ttvm-logs`' `read_checkpoint`). Whatever
//! the bytes: a typed error, or a snapshot that encodes and decodes again to the same
//! memory; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ttvm_vmm::machine::snapshot::Snapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = Snapshot::decode(data) {
        let again = snapshot.encode().expect("a decoded snapshot encodes");
        let back = Snapshot::decode(&again).expect("an encoded snapshot decodes");
        assert_eq!(back.memory, snapshot.memory);
        assert_eq!(back.parent, snapshot.parent);
    }
});
