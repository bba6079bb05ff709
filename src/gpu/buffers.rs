//! Buffer helpers: create and upload, poison with NaN, read back with one map at the end.

use anyhow::{anyhow, Context, Result};
use bytemuck::Pod;

use super::context::GpuContext;
use super::precision::Precision;

/// Usage for activation and weight buffers: bindable as storage, copyable both ways.
pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// wgpu rejects zero-sized bindings; every buffer is at least this big.
const MIN_BYTES: u64 = 16;

fn padded(bytes: u64) -> u64 {
    bytes
        .max(MIN_BYTES)
        .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
}

impl GpuContext {
    /// A storage buffer holding `data`.
    pub fn upload<T: Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        self.buffer_with(label, STORAGE, bytemuck::cast_slice(data))
    }

    /// A uniform buffer holding `value` (a `#[repr(C)]` Pod params struct).
    pub fn uniform<T: Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.buffer_with(
            label,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            bytemuck::bytes_of(value),
        )
    }

    /// A buffer with `usage` initialised from `bytes` (padded to the copy alignment).
    pub fn buffer_with(
        &self,
        label: &str,
        usage: wgpu::BufferUsages,
        bytes: &[u8],
    ) -> wgpu::Buffer {
        let size = padded(bytes.len() as u64);
        self.count_created(size);
        let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: true,
        });
        // Only a buffer whose creation failed (out of memory, a lost device) cannot be mapped;
        // wgpu reports that failure to the enclosing error scope or to the context's failure
        // slot, so the missing contents never go unnoticed.
        match buffer.slice(..).get_mapped_range_mut() {
            Ok(mut view) => view.slice(..bytes.len()).copy_from_slice(bytes),
            Err(e) => log::warn!("buffer {label:?} could not be filled: {e:?}"),
        }
        buffer.unmap();
        buffer
    }

    /// A storage buffer of `len` f32 filled with NaN, so that any element a kernel forgets to
    /// write shows up in the comparison.
    pub fn poisoned(&self, label: &str, len: usize) -> wgpu::Buffer {
        self.upload(label, &vec![f32::NAN; len.max(1)])
    }

    /// A storage buffer holding `data` stored as `precision`.
    pub fn upload_as(&self, label: &str, data: &[f32], precision: Precision) -> wgpu::Buffer {
        self.buffer_with(label, STORAGE, &precision.encode(data))
    }

    /// `len` NaN stored as `precision` (see [`GpuContext::poisoned`]).
    pub fn poisoned_as(&self, label: &str, len: usize, precision: Precision) -> wgpu::Buffer {
        self.upload_as(label, &vec![f32::NAN; len.max(1)], precision)
    }

    /// Reads `len` values stored as `precision` from the start of `buffer`, as f32.
    pub fn read_as(
        &self,
        buffer: &wgpu::Buffer,
        len: usize,
        precision: Precision,
    ) -> Result<Vec<f32>> {
        // Whole f32 words (copies move multiples of 4 bytes), reinterpreted.
        let words = (len * precision.bytes()).div_ceil(4);
        let raw = self.read_f32(buffer, words)?;
        Ok(precision.decode(bytemuck::cast_slice(&raw), len))
    }

    /// An uninitialised (zeroed by wgpu) storage buffer of `bytes`.
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        let size = padded(bytes);
        self.count_created(size);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: STORAGE,
            mapped_at_creation: false,
        })
    }

    /// Reads `len` f32 from the start of `buffer`.
    pub fn read_f32(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        Ok(self.read_many(&[(buffer, len)])?.pop().unwrap_or_default())
    }

    /// Reads several buffers with one copy submission and one map of one staging buffer.
    pub fn read_many(&self, reads: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>> {
        let sizes: Vec<u64> = reads.iter().map(|&(_, n)| (n * 4) as u64).collect();
        let mut offsets = Vec::with_capacity(reads.len());
        let mut total = 0u64;
        for s in &sizes {
            offsets.push(total);
            total += s.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        }
        let staging = self.validated("creating the read-back buffer", || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read back"),
                size: padded(total),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("read back"),
            });
        for ((&(buffer, _), &size), &offset) in reads.iter().zip(&sizes).zip(&offsets) {
            if size > buffer.size() {
                return Err(anyhow!(
                    "reading {size} bytes from {:?}, which holds {}",
                    buffer,
                    buffer.size()
                ));
            }
            if size > 0 {
                encoder.copy_buffer_to_buffer(buffer, 0, &staging, offset, Some(size));
            }
        }
        self.validated("submitting the read-back copies", || {
            self.queue.submit([encoder.finish()]);
        })?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait_idle()?;
        rx.recv()
            .context("read-back callback never ran")?
            .map_err(|e| anyhow!("mapping the read-back buffer: {e}"))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| anyhow!("read-back range: {e:?}"))?;
            reads
                .iter()
                .zip(&offsets)
                .map(|(&(_, n), &off)| {
                    let bytes = &view[off as usize..off as usize + n * 4];
                    bytemuck::pod_collect_to_vec::<u8, f32>(bytes)
                })
                .collect()
        };
        staging.unmap();
        Ok(out)
    }
}
