//! Reading and writing single tensors as safetensors files (`ddim forward` input and output).

use crate::Tensor;
use anyhow::{bail, Context, Result};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
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
    let bytes = crate::path_kind::read_bounded(path, "tensor file", MAX_FILE_BYTES)?;
    tensor_from_bytes(&bytes, name).with_context(|| format!("in {}", path.display()))
}

/// What is wrong with the safetensors `bytes` that the library refused with `e`, in words and
/// naming the tensor where the header allows: the library's own errors often name none.
pub fn explain_safetensors_error(bytes: &[u8], e: &SafeTensorError) -> String {
    let found = header_problem(bytes);
    match (e, found) {
        (_, Some(problem)) => problem,
        (SafeTensorError::InvalidOffset(name), None) => {
            format!("tensor {name:?}: its data offsets do not fit the file")
        }
        (SafeTensorError::TensorNotFound(name), None) => format!("no tensor named {name:?}"),
        (other, None) => format!("{other}"),
    }
}

/// Bytes per element of a safetensors dtype name; None for sub-byte or unknown types.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// The first inconsistency of a safetensors header, with the tensor it concerns: a shape whose
/// bytes differ from its offsets, offsets reversed, a gap or overlap between tensors, data
/// beyond the file or bytes no tensor covers. None when the header cannot be read this far or
/// shows nothing wrong.
fn header_problem(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 8 {
        return Some(format!(
            "only {} bytes: no safetensors header (truncated file?)",
            bytes.len()
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().ok()?);
    let Some(header) = usize::try_from(n)
        .ok()
        .and_then(|n| bytes.get(8..8usize.checked_add(n)?))
    else {
        return Some(format!(
            "the header length field says {n} bytes, the file has {} after it (truncated or not \
             a safetensors file)",
            bytes.len() - 8
        ));
    };
    let data_len = (bytes.len() - 8 - header.len()) as u64;
    let text = match std::str::from_utf8(header) {
        Ok(t) => t,
        Err(e) => return Some(format!("the header is not UTF-8 text ({e})")),
    };
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(e) => return Some(format!("the JSON header is broken ({e})")),
    };
    let entries = json.as_object()?;
    let mut spans = Vec::new();
    for (name, v) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype = v.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
        let shape: Option<Vec<u64>> = v
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect());
        let offsets: Option<Vec<u64>> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect());
        let (Some(shape), Some([begin, end])) = (
            shape,
            offsets
                .as_deref()
                .map(|o| o.to_vec())
                .and_then(|o| <[u64; 2]>::try_from(o).ok()),
        ) else {
            return Some(format!(
                "tensor {name:?}: its header entry needs \"dtype\", \"shape\" (whole numbers) \
                 and \"data_offsets\" [begin, end]; got {v}"
            ));
        };
        if end < begin {
            return Some(format!(
                "tensor {name:?}: data offsets [{begin}, {end}] are reversed"
            ));
        }
        if let Some(size) = dtype_size(dtype) {
            let need = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
            match need {
                None => {
                    return Some(format!(
                        "tensor {name:?}: shape {shape:?} of {dtype} overflows"
                    ))
                }
                Some(need) if need != end - begin => {
                    return Some(format!(
                        "tensor {name:?}: shape {shape:?} of {dtype} needs {need} bytes, its data \
                         offsets [{begin}, {end}] hold {}",
                        end - begin
                    ))
                }
                Some(_) => {}
            }
        }
        spans.push((begin, end, name.as_str()));
    }
    spans.sort_unstable();
    let mut at = 0;
    let mut previous = None;
    for &(begin, end, name) in &spans {
        if begin != at {
            let after = previous.map_or("the start of the data".to_string(), |p| {
                format!("tensor {p:?}")
            });
            let what = if begin > at { "a gap" } else { "an overlap" };
            return Some(format!(
                "tensor {name:?}: data offsets [{begin}, {end}] leave {what} after {after} (which ends at {at})"
            ));
        }
        at = end;
        previous = Some(name);
    }
    if at != data_len {
        return Some(match previous {
            Some(last) if at > data_len => format!(
                "tensor {last:?}: its data ends at byte {at}, the file holds {data_len} (truncated file?)"
            ),
            _ => format!(
                "the tensors cover {at} bytes of data, the file holds {data_len} (trailing bytes?)"
            ),
        });
    }
    None
}

/// [`read_tensor`] on the bytes of a safetensors file.
pub fn tensor_from_bytes(bytes: &[u8], name: &str) -> Result<Tensor> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        anyhow::anyhow!(
            "not a valid safetensors file: {}",
            explain_safetensors_error(bytes, &e)
        )
    })?;
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
#[cfg(not(target_arch = "wasm32"))]
pub fn write_tensor(path: &Path, name: &str, tensor: &Tensor) -> Result<()> {
    write_tensors(path, &[(name.to_string(), tensor.clone())])
}

/// Writes named f32 tensors to one safetensors file, atomically (temporary file, then rename).
/// Native only (see `output`); [`encode_tensors`] gives the file's bytes anywhere.
#[cfg(not(target_arch = "wasm32"))]
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    crate::output::write_atomic(path, &encode_tensors(tensors)?)
}

/// Named f32 tensors as the bytes of one safetensors file.
pub fn encode_tensors(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
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
    safetensors::serialize(views, None).context("encoding safetensors")
}
