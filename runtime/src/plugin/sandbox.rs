//! The wasmtime `Engine` every plugin of a host runs in, with its explicit
//! resource limits, and the process-wide epoch ticker that enforces
//! deadlines.
//!
//! **Invariants:**
//! - Guests run on async fibers with epoch interruption: every
//!   [`EPOCH_TICK`] a running guest yields to tokio (a spinning guest cannot
//!   hog a runtime thread) and is stopped once its attempt's time is up.
//! - Instances come from the pooling allocator, whose limits below are fixed
//!   per host; a memory slot is as large as the largest memory grant of the
//!   host and the per-run limiter enforces each plugin's own grant.
//! - The engine's compilation settings do not depend on the grants, so the
//!   compile cache key ([`super::cache`]) is stable when grants change.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use wasmtime::{
    Config, Enabled, Engine, EngineWeak, InstanceAllocationStrategy, PoolingAllocationConfig,
};

/// How often the epoch advances: the granularity of deadlines and of a
/// running guest yielding to the async runtime.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Component instances alive at once per host (runs plus load-time
/// `describe` calls). Runs beyond this wait for a slot rather than fail.
pub const MAX_INSTANCES: u32 = 256;

/// Core wasm instances one component may create. Measured: a Rust
/// `wasm32-wasip2` component instantiates 3 core modules, a ComponentizeJS
/// one 4, a componentize-py one 14 (the interpreter, its libc and
/// extension modules, the WASI adapter and shims).
pub const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 32;

/// Core instances across all live component instances: enough for every
/// instance slot to hold a Python component at once.
pub const TOTAL_CORE_INSTANCES: u32 = MAX_INSTANCES * 16;

/// Linear memories one component may define.
pub const MAX_MEMORIES_PER_COMPONENT: u32 = 4;

/// Linear memories across all live component instances.
pub const TOTAL_MEMORIES: u32 = MAX_INSTANCES * 2;

/// Tables one component may define.
pub const MAX_TABLES_PER_COMPONENT: u32 = 16;

/// Tables across all live component instances.
pub const TOTAL_TABLES: u32 = MAX_INSTANCES * 8;

/// Elements per table. Measured initial sizes: a Rust example 1, a
/// componentize-py component 5,674, a ComponentizeJS one 7,692.
pub const TABLE_ELEMENTS: usize = 20_000;

/// Size of one core instance's or component instance's VM metadata.
pub const MAX_INSTANCE_METADATA: usize = 1 << 20;

/// Bytes of a linear memory reset in place (instead of being handed back to
/// the kernel) when its slot is reused: a run of a small handler touches
/// well under this, so the next run takes no page faults and no `madvise`.
/// With `PAGEMAP_SCAN` (Linux ≥ 6.7) only pages that were really touched are
/// reset. Worst-case RSS cost: this times the warm slots kept.
pub const LINEAR_MEMORY_KEEP_RESIDENT: usize = 1 << 20;

/// Idle instance slots kept warm (their resident pages and image mappings
/// kept) for reuse by the plugin that last used them; bounds the RSS that
/// idle slots hold to about this times [`LINEAR_MEMORY_KEEP_RESIDENT`].
pub const MAX_UNUSED_WARM_SLOTS: u32 = 64;

/// The same for tables.
pub const TABLE_KEEP_RESIDENT: usize = 64 * 1024;

/// Wasm stack a guest may use before it traps with a stack overflow.
pub const MAX_WASM_STACK: usize = 512 * 1024;

/// Size of each async fiber stack: the wasm stack plus room for host calls.
pub const ASYNC_STACK_SIZE: usize = 2 * 1024 * 1024;

/// The wasm page size: memory limits are rounded up to whole pages.
const WASM_PAGE: u64 = 64 * 1024;

/// Build the engine of a host whose largest memory grant is
/// `max_memory_bytes`.
pub fn build_engine(max_memory_bytes: u64) -> wasmtime::Result<Engine> {
    let max_memory = max_memory_bytes.div_ceil(WASM_PAGE) * WASM_PAGE;
    let max_memory = usize::try_from(max_memory).unwrap_or(usize::MAX);

    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(MAX_INSTANCES)
        .max_component_instance_size(MAX_INSTANCE_METADATA)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .total_core_instances(TOTAL_CORE_INSTANCES)
        .max_core_instance_size(MAX_INSTANCE_METADATA)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_memories_per_module(1)
        .total_memories(TOTAL_MEMORIES)
        .max_memory_size(max_memory)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_tables_per_module(1)
        .total_tables(TOTAL_TABLES)
        .table_elements(TABLE_ELEMENTS)
        .total_stacks(MAX_INSTANCES)
        .max_unused_warm_slots(MAX_UNUSED_WARM_SLOTS)
        .linear_memory_keep_resident(LINEAR_MEMORY_KEEP_RESIDENT)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .async_stack_size(ASYNC_STACK_SIZE)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// Engines whose epoch the ticker advances; dead ones are dropped on the
/// next tick, so a host that goes away stops being ticked. `None` when the
/// ticker thread could not be started.
static TICKED: OnceLock<Option<Mutex<Vec<EngineWeak>>>> = OnceLock::new();

/// Start advancing `engine`'s epoch every [`EPOCH_TICK`]. One thread serves
/// every engine of the process; it is started by the first call.
pub fn start_epoch_ticks(engine: &Engine) -> Result<(), String> {
    let mut spawn_error = None;
    let engines = TICKED.get_or_init(|| {
        match std::thread::Builder::new()
            .name("lockstep-epoch".into())
            .spawn(tick_forever)
        {
            Ok(_) => Some(Mutex::new(Vec::new())),
            Err(e) => {
                spawn_error = Some(e.to_string());
                None
            }
        }
    });
    let Some(engines) = engines else {
        return Err(spawn_error
            .unwrap_or_else(|| "the epoch ticker thread could not be started".to_owned()));
    };
    let mut engines = match engines.lock() {
        Ok(e) => e,
        Err(poisoned) => poisoned.into_inner(),
    };
    engines.push(engine.weak());
    Ok(())
}

fn tick_forever() {
    loop {
        std::thread::sleep(EPOCH_TICK);
        let Some(Some(engines)) = TICKED.get() else {
            continue;
        };
        let mut engines = match engines.lock() {
            Ok(e) => e,
            Err(poisoned) => poisoned.into_inner(),
        };
        engines.retain(|weak| match weak.upgrade() {
            Some(engine) => {
                engine.increment_epoch();
                true
            }
            None => false,
        });
    }
}
