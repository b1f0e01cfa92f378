//! Samples this machine's load for the membership record: CPU from
//! `/proc/loadavg`, memory from `/proc/meminfo`, disk from the data dir's
//! file system. Where a figure cannot be read it is reported as 0.

use std::path::Path;

/// CPU (1-minute load average over cores), memory and disk use, each 0.0 to 1.0.
pub fn sample(data_dir: &Path) -> (f32, f32, f32) {
    (cpu(), memory(), disk(data_dir))
}

fn cpu() -> f32 {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f32;
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f32>().ok())
        .map(|l| (l / cores).clamp(0.0, 1.0))
        .unwrap_or(0.0)
}

fn memory() -> f32 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0.0;
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) if total > 0.0 => (1.0 - avail / total).clamp(0.0, 1.0) as f32,
        _ => 0.0,
    }
}

fn disk(dir: &Path) -> f32 {
    match (fs2::total_space(dir), fs2::available_space(dir)) {
        (Ok(total), Ok(avail)) if total > 0 => {
            (1.0 - avail as f64 / total as f64).clamp(0.0, 1.0) as f32
        }
        _ => 0.0,
    }
}
