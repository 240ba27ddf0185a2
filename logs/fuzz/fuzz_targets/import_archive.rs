//! Fuzzes the archive reader (`ttvm import`): the bytes are written to a file and
//! imported into a fresh directory. Whatever the bytes: an imported trace whose header
//! reads, or a typed error that leaves nothing behind; never a panic, and nothing
//! written outside the destination.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use ttvm_logs::archive::{import, ImportTarget};

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("ttvm-fuzz-import-{}", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let file = dir.join("input.ttvm");
    std::fs::write(&file, data).expect("write the input");
    let dest = dir.join("out");
    match import(&file, &ImportTarget::Exact(dest.clone())) {
        Ok(summary) => {
            assert_eq!(summary.dir, dest);
            ttvm_logs::TraceHeader::read(&dest).expect("an imported trace has a header");
        }
        Err(_) => assert!(!dest.exists(), "a failed import left {}", dest.display()),
    }
    // Only the input and the destination: no temporary or escaped path stays.
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("list scratch")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.retain(|n| n != "input.ttvm" && n != "out");
    assert!(names.is_empty(), "left behind: {names:?}");
    let _ = std::fs::remove_dir_all(&dir);
});
