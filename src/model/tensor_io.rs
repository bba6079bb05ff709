//! Reading and writing single tensors as safetensors files (`ddim forward` input and output).

use crate::Tensor;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Largest tensor file read: 4 GiB.
const MAX_FILE_BYTES: u64 = 4 << 30;

/// Converts little-endian floating-point bytes to f32; integer types are refused naming `name`.
pub fn bytes_to_f32(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        other => bail!(
            "tensor {name:?} has element type {other:?}; only floating-point tensors (F32, F16, BF16, F64) are supported"
        ),
    })
}

/// Reads the tensor named `name` from a safetensors file, or its only tensor when it holds one.
pub fn read_tensor(path: &Path, name: &str) -> Result<Tensor> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > MAX_FILE_BYTES {
        bail!(
            "{}: {len} bytes is too large for an input tensor",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    tensor_from_bytes(&bytes, name).with_context(|| format!("in {}", path.display()))
}

/// [`read_tensor`] on the bytes of a safetensors file.
pub fn tensor_from_bytes(bytes: &[u8], name: &str) -> Result<Tensor> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| anyhow::anyhow!("not a valid safetensors file: {e:?}"))?;
    let names = st.names();
    let chosen = if names.contains(&name) {
        name.to_string()
    } else if names.len() == 1 {
        names[0].to_string()
    } else {
        bail!(
            "no tensor named {name:?} and {} tensors to choose from ({})",
            names.len(),
            names.join(", ")
        );
    };
    let view = st.tensor(&chosen).expect("listed name");
    let data = bytes_to_f32(&chosen, view.dtype(), view.data())?;
    Tensor::new(view.shape().to_vec(), data)
}

/// Writes `tensor` as f32 under `name`, atomically: a temporary file next to `path`, then rename.
pub fn write_tensor(path: &Path, name: &str, tensor: &Tensor) -> Result<()> {
    write_tensors(path, &[(name.to_string(), tensor.clone())])
}

/// Writes named f32 tensors to one safetensors file, atomically (temporary file, then rename).
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, t)| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (name.as_str(), v))
                .with_context(|| format!("building tensor {name:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let encoded = safetensors::serialize(views, None).context("encoding safetensors")?;
    crate::output::write_atomic(path, &encoded)
}
