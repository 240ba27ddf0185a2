//! Names of the single-step clock's parameters in `ClockInfo::params` (the recorder writes
//! them, the replayer reads them; both use these names so they cannot drift apart).

/// `ClockInfo::name` of the single-step clock.
pub const SINGLESTEP_CLOCK: &str = "singlestep";
/// Guest nanoseconds per step.
pub const NS_PER_STEP: &str = "ns_per_step";
/// TSC value at boot.
pub const TSC_BASE: &str = "tsc_base";
/// Wall-clock time at boot, unix nanoseconds.
pub const WALL_CLOCK: &str = "boot_wall_clock_ns";
/// The KVM vendor module the trace was recorded on.
pub const KVM_MODULE: &str = "kvm_module";
/// Whether that KVM needed single-step re-armed before every step ("true"/"false").
pub const STEP_REARM: &str = "step_rearm";
/// The instructions that KVM ran together with the next one in one single step (comma-
/// separated; the recorder passed over them in the VMM). Absent in traces from before
/// this was probed.
pub const STEP_MERGES: &str = "step_merges";
/// Seed of a chaos recording (`ttvm record --chaos`), decimal; absent otherwise.
pub const CHAOS_SEED: &str = "chaos_seed";
/// What a chaos recording perturbed, for people (replay needs nothing of it).
pub const CHAOS: &str = "chaos";
/// `ClockInfo::name` of the performance-counter clock.
pub const PMU_CLOCK: &str = "pmu";
/// PMU clock: the CPU vendor string the counter's event belongs to.
pub const PMU_VENDOR: &str = "pmu_vendor";
/// PMU clock: the raw perf event code (PERF_TYPE_RAW config), hex.
pub const PMU_EVENT: &str = "pmu_event";
/// PMU clock: the skid margin in branches used when replaying.
pub const PMU_SKID: &str = "pmu_skid";
/// PMU clock: which counter counted: [`PMU_COUNTER_HARDWARE`] or [`PMU_COUNTER_EMULATED`].
pub const PMU_COUNTER: &str = "pmu_counter";
/// The CPU's performance counter (perf_event_open).
pub const PMU_COUNTER_HARDWARE: &str = "hardware";
/// ttvm's software branch counter (single-stepping; `--clock pmu-emulated`).
pub const PMU_COUNTER_EMULATED: &str = "emulated";
/// PMU clock: guest nanoseconds per tick (retired conditional branch).
pub const NS_PER_TICK: &str = "ns_per_tick";
