//! Typed device tensors: a buffer region with a shape, element strides and a storage precision.
//!
//! A tensor is checked against its buffer once, where it is made or viewed; kernel wrappers take
//! tensors and only check that shapes agree with each other. Views (a slice along one dimension,
//! a transpose, one dimension split in two, a broadcast) never copy: they change the offset and
//! strides, which the strided kernels (matmul) take as they are and the others require to be
//! contiguous.

use anyhow::{ensure, Result};

use super::context::GpuContext;
use super::kernel::BufferSlice;
use super::precision::Precision;

#[derive(Clone, Debug)]
pub struct GpuTensor {
    buffer: wgpu::Buffer,
    /// Elements from the buffer's start to element [0, 0, …].
    offset: usize,
    shape: Vec<usize>,
    /// Elements between neighbours along each dimension (0: broadcast).
    strides: Vec<usize>,
    precision: Precision,
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl GpuTensor {
    /// A contiguous tensor of `shape` at the start of `buffer`.
    pub fn new(buffer: &wgpu::Buffer, shape: &[usize], precision: Precision) -> Result<Self> {
        Self::strided(buffer, 0, shape, &contiguous_strides(shape), precision)
    }

    /// A view of `buffer` with an element `offset` and element `strides`; every element it
    /// addresses must lie inside the buffer.
    pub fn strided(
        buffer: &wgpu::Buffer,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
        precision: Precision,
    ) -> Result<Self> {
        ensure!(
            shape.len() == strides.len(),
            "tensor: shape {shape:?} and strides {strides:?} differ in rank"
        );
        let t = Self {
            buffer: buffer.clone(),
            offset,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
            precision,
        };
        let need = (t.extent() * precision.bytes()) as u64;
        ensure!(
            need <= buffer.size(),
            "tensor {shape:?} {precision} (offset {offset}, strides {strides:?}) needs {need} bytes; \
             buffer {:?} holds {}",
            buffer,
            buffer.size()
        );
        ensure!(
            t.extent() < u32::MAX as usize,
            "tensor {shape:?}: {} elements overflow the kernels' 32-bit indexing",
            t.extent()
        );
        Ok(t)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn offset(&self) -> usize {
        self.offset
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// One past the highest element index the view touches (0 when empty).
    fn extent(&self) -> usize {
        if self.shape.contains(&0) {
            return self.offset;
        }
        self.offset
            + self
                .shape
                .iter()
                .zip(&self.strides)
                .map(|(&n, &s)| (n - 1) * s)
                .sum::<usize>()
            + 1
    }

    /// Row-major with no gaps and no broadcast.
    pub fn is_contiguous(&self) -> bool {
        self.strides == contiguous_strides(&self.shape)
    }

    /// The whole buffer, for a kernel that indexes with the view's offset and strides itself.
    pub fn binding(&self) -> BufferSlice<'_> {
        (&self.buffer).into()
    }

    /// The buffer for a kernel that reads `shape` densely from element 0 as `precision`:
    /// an error naming `what` unless this tensor is exactly that.
    pub fn dense(
        &self,
        what: &str,
        shape: &[usize],
        precision: Precision,
    ) -> Result<BufferSlice<'_>> {
        self.expect(what, shape, precision)?;
        ensure!(
            self.offset == 0 && self.is_contiguous(),
            "{what}: the kernel needs a contiguous tensor at offset 0, got offset {} strides {:?}",
            self.offset,
            self.strides
        );
        Ok(self.binding())
    }

    /// The buffer of an f32 tensor of `numel` contiguous values from element 0, whatever its
    /// shape (the sampler's updates work elementwise on NHWC images): an error naming `what`
    /// otherwise.
    pub fn flat(&self, what: &str, numel: usize) -> Result<BufferSlice<'_>> {
        ensure!(
            self.numel() == numel && self.precision == Precision::F32,
            "{what}: expected {numel} f32 values, got a {:?} {} tensor",
            self.shape,
            self.precision
        );
        self.dense(what, &self.shape.clone(), Precision::F32)
    }

    /// An error naming `what` unless the shape and precision are as given.
    pub fn expect(&self, what: &str, shape: &[usize], precision: Precision) -> Result<()> {
        ensure!(
            self.shape == shape && self.precision == precision,
            "{what}: expected a {shape:?} {precision} tensor, got {:?} {}",
            self.shape,
            self.precision
        );
        Ok(())
    }

    /// Elements `start..start + len` along `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        ensure!(
            dim < self.rank() && start + len <= self.shape[dim],
            "tensor {:?}: no slice {start}..{} along dimension {dim}",
            self.shape,
            start + len
        );
        let mut t = self.clone();
        t.offset += start * self.strides[dim];
        t.shape[dim] = len;
        Ok(t)
    }

    /// Dimensions `a` and `b` swapped.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Self> {
        ensure!(
            a < self.rank() && b < self.rank(),
            "tensor {:?}: no dimensions {a} and {b} to swap",
            self.shape
        );
        let mut t = self.clone();
        t.shape.swap(a, b);
        t.strides.swap(a, b);
        Ok(t)
    }

    /// Dimension `dim` of size `outer · inner` seen as two, `[outer, inner]`.
    pub fn split(&self, dim: usize, outer: usize, inner: usize) -> Result<Self> {
        ensure!(
            dim < self.rank() && outer * inner == self.shape[dim],
            "tensor {:?}: dimension {dim} does not split into {outer} × {inner}",
            self.shape
        );
        let mut t = self.clone();
        let s = self.strides[dim];
        t.shape.splice(dim..=dim, [outer, inner]);
        t.strides.splice(dim..=dim, [s * inner, s]);
        Ok(t)
    }

    /// A new leading dimension of `n` that repeats this tensor (stride 0).
    pub fn broadcast(&self, n: usize) -> Self {
        let mut t = self.clone();
        t.shape.insert(0, n);
        t.strides.insert(0, 0);
        t
    }

    /// The same elements under another shape (contiguous tensors only).
    pub fn reshape(&self, shape: &[usize]) -> Result<Self> {
        ensure!(
            self.is_contiguous() && shape.iter().product::<usize>() == self.numel(),
            "tensor {:?} (strides {:?}) cannot be seen as {shape:?}",
            self.shape,
            self.strides
        );
        let mut t = self.clone();
        t.shape = shape.to_vec();
        t.strides = contiguous_strides(shape);
        Ok(t)
    }
}

/// A per-step table of f32 values: `steps` blocks of `[batch, width]`, `stride_bytes` apart. A
/// kernel binds one block and selects the step with a dynamic offset (`step · stride_bytes`), so
/// tables that are bound that way have blocks aligned to the storage offset alignment.
#[derive(Clone, Debug)]
pub struct StepTable {
    /// `[steps, batch, width]`, strides `[stride_bytes / 4, width, 1]`.
    tensor: GpuTensor,
}

impl StepTable {
    /// A zeroed table whose blocks start at multiples of the storage offset alignment.
    pub fn aligned(
        ctx: &GpuContext,
        label: &str,
        steps: usize,
        batch: usize,
        width: usize,
    ) -> Self {
        let align = ctx.limits.min_storage_buffer_offset_alignment as usize;
        let stride = (batch * width * 4).next_multiple_of(align) / 4;
        let buffer = ctx.storage(label, (stride * steps * 4) as u64);
        Self::over(&buffer, steps, batch, width, stride).expect("a buffer made for its table")
    }

    /// A table holding `blocks` (one `[batch · width]` block per step), aligned as
    /// [`StepTable::aligned`]; the gaps between blocks hold NaN.
    pub fn aligned_from(
        ctx: &GpuContext,
        label: &str,
        blocks: &[Vec<f32>],
        batch: usize,
        width: usize,
    ) -> Result<Self> {
        let align = ctx.limits.min_storage_buffer_offset_alignment as usize;
        let stride = (batch * width * 4).next_multiple_of(align) / 4;
        let mut data = vec![f32::NAN; stride * blocks.len().max(1)];
        for (s, block) in blocks.iter().enumerate() {
            ensure!(
                block.len() == batch * width,
                "{label}: step {s} has {} values, expected {batch} × {width}",
                block.len()
            );
            data[s * stride..][..block.len()].copy_from_slice(block);
        }
        Self::over(
            &ctx.upload(label, &data),
            blocks.len(),
            batch,
            width,
            stride,
        )
    }

    /// `steps · batch · width` values with no gaps (read by products, never bound per step).
    pub fn packed(ctx: &GpuContext, label: &str, steps: usize, batch: usize, width: usize) -> Self {
        let buffer = ctx.storage(label, (steps * batch * width * 4) as u64);
        Self::over(&buffer, steps, batch, width, batch * width)
            .expect("a buffer made for its table")
    }

    fn over(
        buffer: &wgpu::Buffer,
        steps: usize,
        batch: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let tensor = GpuTensor::strided(
            buffer,
            0,
            &[steps, batch, width],
            &[stride, width, 1],
            Precision::F32,
        )?;
        Ok(Self { tensor })
    }

    /// `[steps, batch, width]` (a strided view when the blocks are aligned).
    pub fn tensor(&self) -> &GpuTensor {
        &self.tensor
    }

    pub fn steps(&self) -> usize {
        self.tensor.shape[0]
    }

    pub fn batch(&self) -> usize {
        self.tensor.shape[1]
    }

    pub fn width(&self) -> usize {
        self.tensor.shape[2]
    }

    /// Bytes from one step's block to the next (the dynamic offset per step).
    pub fn stride_bytes(&self) -> u32 {
        (self.tensor.strides[0] * 4) as u32
    }

    /// Step 0's block, for a binding with a dynamic offset.
    pub fn step_binding(&self) -> BufferSlice<'_> {
        BufferSlice {
            buffer: &self.tensor.buffer,
            offset: 0,
            size: Some((self.batch() * self.width() * 4) as u64),
        }
    }

    /// The table as `[steps][batch · width]` (for tests and `ddim verify`).
    pub fn read(&self, ctx: &GpuContext) -> Result<Vec<Vec<f32>>> {
        let stride = self.tensor.strides[0];
        let all = ctx.read_f32(&self.tensor.buffer, self.steps() * stride)?;
        Ok((0..self.steps())
            .map(|s| all[s * stride..][..self.batch() * self.width()].to_vec())
            .collect())
    }
}

impl GpuContext {
    /// A new zeroed contiguous tensor.
    pub fn tensor(&self, label: &str, shape: &[usize], precision: Precision) -> GpuTensor {
        let n: usize = shape.iter().product();
        let buffer = self.storage(label, (n * precision.bytes()) as u64);
        GpuTensor::new(&buffer, shape, precision).expect("a buffer made for its tensor")
    }

    /// `data` uploaded as a contiguous tensor of `shape`.
    pub fn tensor_from(
        &self,
        label: &str,
        data: &[f32],
        shape: &[usize],
        precision: Precision,
    ) -> Result<GpuTensor> {
        let n: usize = shape.iter().product();
        ensure!(
            data.len() == n,
            "{label}: {} values for a {shape:?} tensor of {n}",
            data.len()
        );
        GpuTensor::new(&self.upload_as(label, data, precision), shape, precision)
    }

    /// A contiguous tensor filled with NaN (see [`GpuContext::poisoned`]).
    pub fn poisoned_tensor(&self, label: &str, shape: &[usize], precision: Precision) -> GpuTensor {
        let n: usize = shape.iter().product();
        let buffer = self.poisoned_as(label, n, precision);
        GpuTensor::new(&buffer, shape, precision).expect("a buffer made for its tensor")
    }

    /// A contiguous tensor's values as f32.
    pub fn read_tensor(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        ensure!(
            t.offset == 0 && t.is_contiguous(),
            "reading a strided view {:?} (read its base tensor)",
            t.shape
        );
        self.read_as(&t.buffer, t.numel(), t.precision)
    }
}

#[cfg(test)]
mod tests {
    use super::contiguous_strides;

    #[test]
    fn contiguous_strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<usize>::new());
    }
}
