//! GPU memory accounting for the bench: what the weights need, what the largest set of
//! simultaneously live activations needs, and what the driver's allocator reports.

use serde::Serialize;

use ddim_wgpu::gpu::GpuContext;
use ddim_wgpu::model::unet::Op;
use ddim_wgpu::model::UNet;

/// Bytes of f32 weights.
pub fn weights_bytes(unet: &UNet) -> u64 {
    unet.params() * 4
}

/// The largest set of activations that must exist at once in a forward at `batch`, in bytes
/// (f32): over all layers, the layer's input and output plus every skip tensor pushed and not
/// yet consumed. Layer-internal temporaries (a resnet's normalised input, the attention scores)
/// are not counted: the target "memory ≤ weights + 3 × this" leaves room for them.
pub fn largest_live_activations_bytes(unet: &UNet, batch: usize) -> u64 {
    let mut live_skips: Vec<usize> = Vec::new();
    let mut largest = unet.input.numel();
    for layer in &unet.layers {
        let skips: usize = live_skips.iter().sum();
        match layer.op {
            Op::PushSkip { slot } => {
                let n = unet.skips.get(slot).map_or(0, |s| s.numel());
                live_skips.push(n);
            }
            Op::ConcatSkip { .. } => {
                // Reads h and the skip, writes the concatenation; the skip is released after.
                largest = largest.max(layer.input.numel() + layer.output.numel() + skips);
                live_skips.pop();
                continue;
            }
            _ => {}
        }
        largest = largest.max(layer.input.numel() + layer.output.numel() + skips);
    }
    (largest * batch * 4) as u64
}

/// Bytes the backend's allocator has handed out, where the backend reports it (Vulkan, DX12,
/// Metal with sub-allocation); None elsewhere (GL). Buffers created mapped are filled through
/// staging memory that wgpu frees only once a submission completes, so this flushes first.
pub fn allocator_bytes(ctx: &GpuContext) -> anyhow::Result<Option<u64>> {
    ctx.queue.submit([]);
    ctx.wait_idle()?;
    Ok(ctx
        .device
        .generate_allocator_report()
        .map(|r| r.total_allocated_bytes))
}

/// The memory part of a bench report.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    /// The plan's activation buffers (pooled by liveness), when the plan reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation_buffers_bytes: Option<u64>,
    /// weights_bytes + activation_buffers_bytes: the buffers the forward needs, without scratch
    /// and parameter blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffers_bytes: Option<u64>,
    /// Growth of the allocator's total while building the plan (the weights are uploaded
    /// before), where the backend reports it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocator_delta_bytes: Option<u64>,
    /// What is compared with the budget: weights_bytes + allocator_delta_bytes where the
    /// backend reports the allocator, else buffers_bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_bytes: Option<u64>,
    pub weights_bytes: u64,
    pub largest_live_activations_bytes: u64,
    /// weights + 3 × largest live activations (the target).
    pub budget_bytes: u64,
    /// Whether `measured_bytes` is within the budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_budget: Option<bool>,
}

impl MemoryReport {
    /// `weights_bytes`: what the upload created (f16 weights take about half of f32's);
    /// activations are counted at `element_bytes` each; `allocator_delta_bytes`: the plan's
    /// growth of the allocator, measured after the weights were uploaded.
    pub fn new(
        unet: &UNet,
        batch: usize,
        (weights_bytes, element_bytes): (u64, usize),
        activation_buffers_bytes: Option<u64>,
        allocator_delta_bytes: Option<u64>,
    ) -> Self {
        let live = largest_live_activations_bytes(unet, batch) / 4 * element_bytes as u64;
        let budget_bytes = weights_bytes + 3 * live;
        let buffers_bytes = activation_buffers_bytes.map(|a| a + weights_bytes);
        let measured_bytes = allocator_delta_bytes
            .map(|d| weights_bytes + d)
            .or(buffers_bytes);
        Self {
            activation_buffers_bytes,
            buffers_bytes,
            allocator_delta_bytes,
            measured_bytes,
            weights_bytes,
            largest_live_activations_bytes: live,
            budget_bytes,
            within_budget: measured_bytes.map(|m| m <= budget_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddim_wgpu::model::UNet2DConfig;

    #[test]
    fn live_set_counts_skips() {
        let unet = UNet::from_config(&UNet2DConfig::cifar10()).unwrap();
        let one = largest_live_activations_bytes(&unet, 1);
        assert_eq!(largest_live_activations_bytes(&unet, 4), 4 * one);
        // The largest activation is produced by a concat, whose input (and live skips) add to it.
        let biggest = unet.max_activation() as u64 * 4;
        assert!(one > 2 * biggest, "{one} vs {biggest}");
        // All skips plus in and out of the largest layer bound it from above.
        let all_skips: usize = unet.skips.iter().map(|s| s.numel()).sum();
        assert!(one <= (all_skips as u64 + 2 * unet.max_activation() as u64) * 4);
    }

    #[test]
    fn the_weights_count_against_the_budget_on_both_sides() {
        let unet = UNet::from_config(&UNet2DConfig::cifar10()).unwrap();
        let live = largest_live_activations_bytes(&unet, 2);
        let weights = 100 << 20;
        // The plan's own allocation fits 3 × live, but not once the weights are added to it.
        let delta = 3 * live - 1;
        let r = MemoryReport::new(&unet, 2, (weights, 4), Some(live), Some(delta));
        assert_eq!(r.budget_bytes, weights + 3 * live);
        assert_eq!(r.measured_bytes, Some(weights + delta));
        assert_eq!(r.within_budget, Some(true));
        let r = MemoryReport::new(&unet, 2, (weights, 4), Some(live), Some(3 * live + 1));
        assert_eq!(r.within_budget, Some(false));
        // Without an allocator report, the buffers (weights + activations) are measured.
        let r = MemoryReport::new(&unet, 2, (weights, 4), Some(live), None);
        assert_eq!(r.measured_bytes, Some(weights + live));
    }
}
