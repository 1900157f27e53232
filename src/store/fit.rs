//! The largest live feeder, as the queue's SQL function `rq_unfit` sees it (SQLite's
//! function; PostgreSQL's session settings): a listing says why a pending job no live
//! feeder can run waits. Set by whoever last looked at the feeders (`queue::status`).

use std::sync::RwLock;

/// What a host offers jobs: CPUs, memory in bytes, GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSize {
    pub cpus: i64,
    pub mem: i64,
    pub gpus: i64,
}

static LARGEST_LIVE: RwLock<Option<HostSize>> = RwLock::new(None);

pub fn set_largest_live(largest: Option<HostSize>) {
    if let Ok(mut slot) = LARGEST_LIVE.write() {
        *slot = largest;
    }
}

pub fn largest_live_known() -> Option<HostSize> {
    LARGEST_LIVE.read().ok().and_then(|l| *l)
}

/// Why a job that needs `cpus`, `mem` bytes and `gpus` cannot run on any live feeder.
pub fn unfit_reason(cpus: i64, mem: i64, gpus: i64, largest: &HostSize) -> Option<String> {
    let plural = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    if gpus > largest.gpus {
        Some(format!(
            "needs {}; the largest feeder has {}",
            plural(gpus, "GPU", "GPUs"),
            largest.gpus
        ))
    } else if cpus > largest.cpus {
        Some(format!(
            "needs {}; the largest feeder has {}",
            plural(cpus, "CPU", "CPUs"),
            largest.cpus
        ))
    } else if mem > largest.mem {
        Some(format!(
            "needs {} MiB of memory; the largest feeder has {} MiB",
            mem >> 20,
            largest.mem >> 20
        ))
    } else {
        None
    }
}
