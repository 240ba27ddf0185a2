//! Fuzzes `header.json` parsing (version gate, then serde).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ttvm_logs::TraceHeader::parse(std::path::Path::new("fuzz"), data);
});
