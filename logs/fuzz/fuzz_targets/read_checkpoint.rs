//! Fuzzes the checkpoint file decoder (header, checksums, size claims, zstd payload).
//! Whatever the bytes: a typed error or a checkpoint within the size limit, never a
//! panic, and never more memory than the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ttvm_logs::checkpoint::decode_checkpoint;

/// A small machine's limit, so a claim above it is exercised without large allocations.
const MAX_RAW: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.ckpt");
    if let Ok((_, bytes)) = decode_checkpoint(path, data, None, MAX_RAW) {
        assert!(bytes.len() as u64 <= MAX_RAW);
    }
    // With the position the file name would give.
    let _ = decode_checkpoint(path, data, Some(0), MAX_RAW);
});
