//! Jobs that cannot fit in memory are refused before any work, with the limit and what fits,
//! instead of aborting (or panicking on an overflowing size) once the allocation is tried.

use anyhow::{bail, Result};

/// What a job keeps in memory per image: `copies` f32 copies of every image element (the
/// state, the noise, the result …) and `bytes` bytes more per element (the 8-bit grid).
#[derive(Clone, Copy, Debug)]
pub struct PerImage {
    pub elements: u128,
    pub f32_copies: u128,
    pub bytes: u128,
}

impl PerImage {
    /// The bytes `count` images take.
    fn bytes_for(&self, count: u128) -> u128 {
        count
            .saturating_mul(self.elements)
            .saturating_mul(self.f32_copies * 4 + self.bytes)
    }
}

/// `MemAvailable` of /proc/meminfo (Linux); None elsewhere or when it cannot be read.
fn available_bytes() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u128 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

fn gb(bytes: u128) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// Refuses `count` images of `per` when they need more than the memory available now (or than
/// this machine can address at all). `what` names the option that asked for them; `instead`
/// says what to do for more.
pub fn check(what: &str, count: u128, per: PerImage, instead: &str) -> Result<()> {
    let need = per.bytes_for(count);
    let (limit, source) = match available_bytes() {
        Some(b) => (b, "available now (MemAvailable)"),
        None => (isize::MAX as u128, "addressable"),
    };
    let limit = limit.min(isize::MAX as u128);
    if need <= limit {
        return Ok(());
    }
    // The largest count whose bytes stay within the limit.
    let fit = limit / per.bytes_for(1).max(1);
    bail!(
        "{what} {count}: that many images need {} of memory, {} are {source}; at most {fit} fit \
         in one run{instead}",
        gb(need),
        gb(limit),
    )
}

/// Refuses a `--batch` of images that cannot fit in host memory. With `activations` (the CPU
/// reference runs it, or `ddim verify` keeps every layer's output): every layer's output of
/// one image as f32; else only the batch's input and output (a GPU holds the activations, and
/// its plan refuses a batch it cannot hold with its own limit).
pub fn check_batch(unet: &ddim_wgpu::model::UNet, batch: usize, activations: bool) -> Result<()> {
    let layers: u128 = unet.layers.iter().map(|l| l.output.numel() as u128).sum();
    let io = (unet.input.numel() + unet.output.numel()) as u128;
    let per = PerImage {
        elements: if activations { layers.max(io) } else { io },
        f32_copies: 1,
        bytes: 0,
    };
    check("--batch", batch as u128, per, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_count_is_refused_with_what_fits() {
        let per = PerImage {
            elements: 784,
            f32_copies: 4,
            bytes: 2,
        };
        check("-n", 1, per, "").unwrap();
        let e = check("-n", u64::MAX as u128, per, "; use --seeds")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("-n 18446744073709551615") && e.contains("at most"),
            "{e}"
        );
        assert!(e.contains("use --seeds"), "{e}");
    }
}
