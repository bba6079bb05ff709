//! Device memory: how much a run may use, and what a batch needs, so that a batch or a model
//! too large for the adapter is refused before its buffers are created (with the limit it hit),
//! instead of failing half-way or driving the host into swap.
//!
//! wgpu cannot ask a GPU how much memory it has, so the budget is known only when the user
//! gives one (`--gpu-memory MIB`) or the adapter is a CPU implementation (lavapipe, llvmpipe,
//! WARP), whose "device memory" is the host's available memory. Elsewhere an allocation the
//! GPU refuses is caught by the error scopes around plan building (`GpuContext::validated`).

/// An upper bound on the device memory this process may use on one adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub bytes: u64,
    /// Where the figure comes from, for error messages.
    pub source: String,
}

impl MemoryBudget {
    /// The budget for an adapter: `explicit_mib` (the user's `--gpu-memory`) if given, else the
    /// host's available memory for a CPU adapter, else unknown.
    pub fn for_adapter(info: &wgpu::AdapterInfo, explicit_mib: Option<u64>) -> Option<Self> {
        if let Some(mib) = explicit_mib {
            return Some(Self {
                bytes: mib.saturating_mul(1 << 20),
                source: format!("--gpu-memory {mib}"),
            });
        }
        if info.device_type != wgpu::DeviceType::Cpu {
            return None;
        }
        host_available_bytes().map(|bytes| Self {
            bytes,
            source: format!(
                "the host's available memory ({} is a CPU adapter; --gpu-memory MIB sets another budget)",
                info.name
            ),
        })
    }
}

/// `MemAvailable` of /proc/meminfo (Linux); None elsewhere or when it cannot be read.
fn host_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib.saturating_mul(1024))
}

/// Device bytes of a run as a fixed part plus a part per image (both measured or counted by
/// the caller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    pub fixed: u64,
    pub per_image: u64,
}

impl Footprint {
    pub fn at(&self, batch: usize) -> u64 {
        self.fixed
            .saturating_add(self.per_image.saturating_mul(batch as u64))
    }

    /// The largest batch within `bytes` (0 when not even one image fits).
    pub fn max_batch(&self, bytes: u64) -> usize {
        let room = bytes.saturating_sub(self.fixed);
        (room / self.per_image.max(1)).min(usize::MAX as u64) as usize
    }
}

/// MiB with one decimal, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
    }

    #[test]
    fn footprint_arithmetic() {
        let f = Footprint {
            fixed: 100,
            per_image: 30,
        };
        assert_eq!(f.at(0), 100);
        assert_eq!(f.at(3), 190);
        assert_eq!(f.max_batch(190), 3);
        assert_eq!(f.max_batch(189), 2);
        assert_eq!(f.max_batch(99), 0);
    }
}
