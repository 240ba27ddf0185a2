//! The trace header (`header.json`): what was recorded, on what, with which clock, and
//! (once closed) how the recording ended.
//!
//! Versioning: [`FORMAT_VERSION`] is the version of the format this ttvm writes;
//! [`COMPAT_VERSION`] is the oldest reader format able to read what it writes. A reader
//! refuses a trace whose `compat_version` is above its own `FORMAT_VERSION`. Fields added
//! later must be optional (`#[serde(default)]`) so older traces keep parsing; readers
//! ignore fields they do not know.
//!
//! Format 2 (this one) types the clock parameters ([`crate::clock`]); format 1 wrote them
//! as a string map. A format-1 header is upgraded when it is read, so its trace replays.
use crate::clock::{self, ClockInfo};
use crate::event::{EndReason, EventKind};
use crate::files::{self, FileError};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The trace format version this ttvm writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest reader format that can read traces this ttvm writes (format-1 readers
/// expect the clock parameters as strings).
pub const COMPAT_VERSION: u32 = 2;
/// Name of the header file inside a trace directory.
pub const HEADER_FILE: &str = "header.json";
/// Largest `header.json` a reader accepts. A header is a few KiB (the CPUID template is
/// its largest part); anything near this limit is not a header.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Errors reading or writing `header.json`.
#[derive(Debug, Error)]
pub enum HeaderError {
    /// The file could not be read (missing, not a regular file, too large, I/O error).
    #[error("cannot read the trace header: {0}")]
    Read(#[source] FileError),
    /// The file could not be written.
    #[error("cannot write trace header {path}: {source}")]
    Write {
        /// The header file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON or lacks required fields.
    #[error("corrupt trace header {path}: {source}")]
    Parse {
        /// The header file.
        path: PathBuf,
        /// What serde found.
        source: serde_json::Error,
    },
    /// The version fields are missing or not numbers.
    #[error("corrupt trace header {path}: no valid format_version/compat_version")]
    NoVersion {
        /// The header file.
        path: PathBuf,
    },
    /// The version fields name no format any ttvm writes (0, or a trace needing a reader
    /// format above the one that wrote it).
    #[error("corrupt trace header {path}: format_version {format} with compat_version {compat} is not a trace format (this ttvm reads formats 1 to {FORMAT_VERSION})")]
    BadVersion {
        /// The header file.
        path: PathBuf,
        /// The trace's format version.
        format: u32,
        /// The minimum reader format it claims to need.
        compat: u32,
    },
    /// A format-1 header whose clock cannot be read as format 2.
    #[error(
        "cannot read the clock of trace header {path} (format 1, from an older ttvm): {detail}"
    )]
    OldClock {
        /// The header file.
        path: PathBuf,
        /// What is missing or wrong.
        detail: String,
    },
    /// The trace needs a newer reader.
    #[error("trace made by a newer ttvm (format {format}); upgrade ttvm to read it ({path} needs reader format {compat}, this ttvm reads formats 1 to {FORMAT_VERSION})")]
    NewerFormat {
        /// The header file.
        path: PathBuf,
        /// The trace's format version.
        format: u32,
        /// The minimum reader format it needs.
        compat: u32,
    },
}

/// A point in time: Unix seconds and the same as RFC 3339 UTC text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub unix_seconds: u64,
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    pub rfc3339: String,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::from_unix(secs)
    }

    /// The timestamp for `unix_seconds`.
    pub fn from_unix(unix_seconds: u64) -> Self {
        Timestamp {
            unix_seconds,
            rfc3339: format_rfc3339(unix_seconds),
        }
    }
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn format_rfc3339(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// One CPUID leaf as given to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CpuidEntry {
    /// Leaf (eax input).
    pub function: u32,
    /// Sub-leaf (ecx input).
    pub index: u32,
    /// KVM flags of the entry.
    pub flags: u32,
    /// Output eax.
    pub eax: u32,
    /// Output ebx.
    pub ebx: u32,
    /// Output ecx.
    pub ecx: u32,
    /// Output edx.
    pub edx: u32,
}

/// The virtual machine the trace was recorded on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MachineConfig {
    /// Guest RAM size in bytes.
    pub mem_bytes: u64,
    /// Kernel command line.
    pub cmdline: String,
    /// The CPUID template given to the vCPU.
    #[serde(default)]
    pub cpuid: Vec<CpuidEntry>,
}

/// Facts about the recording host's CPU and KVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HostInfo {
    /// `GenuineIntel`, `AuthenticAMD`...
    pub cpu_vendor: String,
    /// Marketing name of the CPU.
    pub cpu_model_name: String,
    /// CPU family.
    pub family: u32,
    /// CPU model.
    pub model: u32,
    /// CPU stepping.
    pub stepping: u32,
    /// KVM flavour and anything notable (nested, versions...).
    #[serde(default)]
    pub kvm_notes: String,
}

impl HostInfo {
    /// Reads the CPU facts of the first processor from `/proc/cpuinfo` (empty fields
    /// where unavailable; `kvm_notes` is left for the VMM to fill).
    pub fn detect() -> Self {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|text| Self::parse_cpuinfo(&text))
            .unwrap_or_default()
    }

    /// Parses the first processor block of `/proc/cpuinfo` text.
    pub fn parse_cpuinfo(text: &str) -> Self {
        let mut info = HostInfo::default();
        for line in text.lines() {
            if line.trim().is_empty() {
                break;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key.trim() {
                "vendor_id" => info.cpu_vendor = value.to_string(),
                "model name" => info.cpu_model_name = value.to_string(),
                "cpu family" => info.family = value.parse().unwrap_or(0),
                "model" => info.model = value.parse().unwrap_or(0),
                "stepping" => info.stepping = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        info
    }
}

/// The guest image embedded in the trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GuestImageInfo {
    /// File name (or label) of the image.
    pub name: String,
    /// Size in bytes, uncompressed.
    pub size: u64,
    /// SHA-256 of the image, lowercase hex.
    pub sha256: String,
}

/// How a recording ended; written into the header at clean close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseRecord {
    /// Why the run ended.
    pub end_reason: EndReason,
    /// Position-clock value at the end.
    pub final_position: u64,
    /// Wall-clock duration of the recording in nanoseconds.
    pub duration_nanos: u64,
    /// When the trace was closed.
    pub closed: Timestamp,
    /// Total number of events in the stream.
    pub event_count: u64,
    /// Number of chunks in `events`.
    pub chunk_count: u64,
    /// Number of checkpoints stored.
    #[serde(default)]
    pub checkpoint_count: u64,
    /// Events per kind (kind name -> count).
    #[serde(default)]
    pub events_by_kind: BTreeMap<String, u64>,
    /// Counters supplied by the recorder (VM exits, single steps...).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
}

/// What the recorder knows when it starts a trace; the writer adds the rest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceMeta {
    /// Name of the guest (used for the directory name `<guest>-<n>`).
    pub guest_name: String,
    /// The ttvm version string (e.g. `env!("CARGO_PKG_VERSION")` of the binary).
    pub ttvm_version: String,
    /// The machine.
    pub machine: MachineConfig,
    /// The position clock.
    pub clock: ClockInfo,
    /// The host.
    pub host: HostInfo,
    /// Name of the guest image file.
    pub guest_image_name: String,
}

/// The contents of `header.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// Format version of the writer.
    pub format_version: u32,
    /// Oldest reader format that can read this trace.
    pub compat_version: u32,
    /// When recording started.
    pub created: Timestamp,
    /// Version of the ttvm that recorded.
    pub ttvm_version: String,
    /// Name of the guest.
    pub guest_name: String,
    /// The machine.
    pub machine: MachineConfig,
    /// The position clock.
    pub clock: ClockInfo,
    /// The host.
    pub host: HostInfo,
    /// The embedded guest image.
    pub guest_image: GuestImageInfo,
    /// The embedded initrd (`initrd.zst`), if the guest was booted with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<GuestImageInfo>,
    /// Filled at clean close; `None` while recording or after a crash.
    #[serde(default)]
    pub close: Option<CloseRecord>,
}

impl TraceHeader {
    /// Builds the header of a new trace from `meta` and the image's facts.
    pub fn new(meta: &TraceMeta, image: GuestImageInfo) -> Self {
        TraceHeader {
            format_version: FORMAT_VERSION,
            compat_version: COMPAT_VERSION,
            created: Timestamp::now(),
            ttvm_version: meta.ttvm_version.clone(),
            guest_name: meta.guest_name.clone(),
            machine: meta.machine.clone(),
            clock: meta.clock.clone(),
            host: meta.host.clone(),
            guest_image: image,
            initrd: None,
            close: None,
        }
    }

    /// Reads `dir/header.json`, refusing traces that need a newer reader.
    pub fn read(dir: &Path) -> Result<Self, HeaderError> {
        let path = dir.join(HEADER_FILE);
        let text = files::read_bounded(&path, MAX_HEADER_BYTES, "a trace header")
            .map_err(HeaderError::Read)?;
        Self::parse(&path, &text)
    }

    /// Parses header bytes (`path` only names the file in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, HeaderError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| HeaderError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let version = |name: &str| {
            value
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
        };
        let (Some(format), Some(compat)) = (version("format_version"), version("compat_version"))
        else {
            return Err(HeaderError::NoVersion {
                path: path.to_path_buf(),
            });
        };
        if format == 0 || compat == 0 || compat > format {
            return Err(HeaderError::BadVersion {
                path: path.to_path_buf(),
                format,
                compat,
            });
        }
        if compat > FORMAT_VERSION {
            return Err(HeaderError::NewerFormat {
                path: path.to_path_buf(),
                format,
                compat,
            });
        }
        let mut value = value;
        if format == 1 {
            if let Some(clock) = value.get_mut("clock") {
                clock::upgrade_v1(clock).map_err(|detail| HeaderError::OldClock {
                    path: path.to_path_buf(),
                    detail,
                })?;
            }
            // Read as what it now is: a rewrite of this header writes format 2.
            value["format_version"] = FORMAT_VERSION.into();
            value["compat_version"] = COMPAT_VERSION.into();
        }
        serde_json::from_value(value).map_err(|source| HeaderError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes `dir/header.json` atomically (temp file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<(), HeaderError> {
        let path = dir.join(HEADER_FILE);
        let mut text = serde_json::to_vec_pretty(self).map_err(|e| HeaderError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push(b'\n');
        fsutil::write_atomic(&path, &text).map_err(|source| HeaderError::Write { path, source })
    }
}

/// Per-kind counts keyed by kind name, skipping zeros.
pub fn counts_by_name(counts: &[u64; EventKind::COUNT]) -> BTreeMap<String, u64> {
    EventKind::ALL
        .iter()
        .zip(counts)
        .filter(|(_, &n)| n > 0)
        .map(|(k, &n)| (k.name().to_string(), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn cpuinfo_parses_first_block() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: Xeon\nstepping\t: 7\n\nprocessor\t: 1\nvendor_id\t: Other\n";
        let h = HostInfo::parse_cpuinfo(text);
        assert_eq!(h.cpu_vendor, "GenuineIntel");
        assert_eq!((h.family, h.model, h.stepping), (6, 85, 7));
        assert_eq!(h.cpu_model_name, "Xeon");
    }

    #[test]
    fn unknown_fields_are_ignored_and_newer_compat_refused() {
        let h = TraceHeader::new(&TraceMeta::default(), GuestImageInfo::default());
        let mut v = serde_json::to_value(&h).unwrap();
        v["some_future_field"] = serde_json::json!({"x": 1});
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(TraceHeader::parse(Path::new("h"), &bytes).unwrap(), h);

        v["format_version"] = serde_json::json!(FORMAT_VERSION + 5);
        v["compat_version"] = serde_json::json!(FORMAT_VERSION + 1);
        v["machine"] = serde_json::json!("changed shape");
        let bytes = serde_json::to_vec(&v).unwrap();
        let err = TraceHeader::parse(Path::new("h"), &bytes).unwrap_err();
        assert!(matches!(err, HeaderError::NewerFormat { .. }));
        assert!(err.to_string().starts_with(&format!(
            "trace made by a newer ttvm (format {}); upgrade ttvm to read it",
            FORMAT_VERSION + 5
        )));
    }

    #[test]
    fn zero_and_inconsistent_versions_are_refused_with_the_supported_range() {
        let h = TraceHeader::new(&TraceMeta::default(), GuestImageInfo::default());
        for (format, compat) in [(0, 1), (0, 0), (1, 0), (1, 2)] {
            let mut v = serde_json::to_value(&h).unwrap();
            v["format_version"] = serde_json::json!(format);
            v["compat_version"] = serde_json::json!(compat);
            let err =
                TraceHeader::parse(Path::new("h"), &serde_json::to_vec(&v).unwrap()).unwrap_err();
            assert!(matches!(err, HeaderError::BadVersion { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!("corrupt trace header h: format_version {format} with compat_version {compat} is not a trace format (this ttvm reads formats 1 to 2)")
            );
        }
        // A newer writer whose traces older readers can read is fine.
        let mut v = serde_json::to_value(&h).unwrap();
        v["format_version"] = serde_json::json!(FORMAT_VERSION + 1);
        assert!(TraceHeader::parse(Path::new("h"), &serde_json::to_vec(&v).unwrap()).is_ok());
    }
    /// A header as format 1 wrote it: clock parameters as strings.
    fn v1_header() -> serde_json::Value {
        let h = TraceHeader::new(&TraceMeta::default(), GuestImageInfo::default());
        let mut v = serde_json::to_value(&h).unwrap();
        v["format_version"] = 1.into();
        v["compat_version"] = 1.into();
        v["clock"] = serde_json::json!({
            "name": "singlestep",
            "semantics": "positions count KVM_GUESTDBG_SINGLESTEP steps",
            "params": {
                "ns_per_step": "100", "tsc_base": "123", "boot_wall_clock_ns": "456",
                "kvm_module": "kvm_pvm", "step_rearm": "false", "step_merges": "lfence"
            }
        });
        v
    }

    #[test]
    fn a_format_1_header_is_read_with_typed_clock_parameters() {
        let bytes = serde_json::to_vec(&v1_header()).unwrap();
        let h = TraceHeader::parse(Path::new("h"), &bytes).unwrap();
        assert_eq!(h.format_version, FORMAT_VERSION);
        let crate::ClockParams::Singlestep(p) = &h.clock.params else {
            panic!("{:?}", h.clock)
        };
        assert_eq!(
            (p.ns_per_step, p.tsc_base, p.boot_wall_clock_ns),
            (100, 123, 456)
        );
        assert_eq!(p.kvm_module, "kvm_pvm");
        assert_eq!(p.step_merges, Some(vec!["lfence".to_string()]));
    }

    #[test]
    fn a_format_1_header_with_a_bad_clock_is_refused_with_the_reason() {
        let mut v = v1_header();
        v["clock"]["params"]["ns_per_step"] = "soon".into();
        let err = TraceHeader::parse(Path::new("h"), &serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, HeaderError::OldClock { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "cannot read the clock of trace header h (format 1, from an older ttvm): the clock \
             parameter \"ns_per_step\" is not a number"
        );
    }

    #[test]
    fn format_1_readers_are_refused_by_new_traces() {
        let h = TraceHeader::new(&TraceMeta::default(), GuestImageInfo::default());
        assert_eq!((h.format_version, h.compat_version), (2, 2));
    }
}
