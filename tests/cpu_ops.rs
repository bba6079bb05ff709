//! The CPU reference ops against PyTorch outputs in tests/fixtures/unet/ops.safetensors
//! (tools/export_unet_fixtures.py, `export_ops`; the op parameters below repeat the script's).

use ddim_wgpu::cpu::ops::{self, Padding};
use ddim_wgpu::tensor::{max_abs_diff, rel_l2};
use ddim_wgpu::Tensor;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::sync::OnceLock;

const TOLERANCE: f64 = 1e-6;

fn fixtures() -> &'static HashMap<String, Tensor> {
    static CELL: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    CELL.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/unet/ops.safetensors"
        );
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        st.tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                (name, Tensor::new(view.shape().to_vec(), data).unwrap())
            })
            .collect()
    })
}

fn get(name: &str) -> &'static Tensor {
    fixtures()
        .get(name)
        .unwrap_or_else(|| panic!("fixture {name} missing"))
}

fn assert_close(what: &str, got: &Tensor, reference: &Tensor) {
    assert_eq!(got.shape, reference.shape, "{what}: shape");
    let err = rel_l2(&got.data, &reference.data);
    let (max_abs, at) = max_abs_diff(&got.data, &reference.data);
    println!("{what}: rel L2 {err:.2e}, max abs {max_abs:.2e} at {at}");
    assert!(err <= TOLERANCE, "{what}: rel L2 {err:.3e} > {TOLERANCE}");
}

fn conv_case(name: &str, stride: usize, pad: Padding) {
    let y = ops::conv2d(
        get(&format!("{name}.x")),
        get(&format!("{name}.w")),
        Some(&get(&format!("{name}.b")).data),
        stride,
        pad,
    );
    assert_close(name, &y, get(&format!("{name}.y")));
}

#[test]
fn conv2d_stride2_asymmetric_padding() {
    let pad = Padding {
        top: 0,
        left: 0,
        bottom: 1,
        right: 1,
    };
    conv_case("conv_s2_asym", 2, pad);
}

#[test]
fn conv2d_stride2_padding1_odd_sizes() {
    conv_case("conv_s2_p1", 2, Padding::same(1));
}

#[test]
fn conv2d_3x3_and_1x1() {
    conv_case("conv_3x3", 1, Padding::same(1));
    conv_case("conv_1x1", 1, Padding::same(0));
}

#[test]
fn group_norm_four_groups() {
    let y = ops::group_norm(
        get("group_norm.x"),
        4,
        &get("group_norm.gamma").data,
        &get("group_norm.beta").data,
        1e-5,
    );
    assert_close("group_norm", &y, get("group_norm.y"));
}

#[test]
fn linear_and_silu() {
    let y = ops::linear(
        get("linear.x"),
        get("linear.w"),
        Some(&get("linear.b").data),
    );
    assert_close("linear", &y, get("linear.y"));
    assert_close("silu", &ops::silu(get("silu.x")), get("silu.y"));
}

#[test]
fn attention_three_heads() {
    let y = ops::attention(
        get("attention.q"),
        get("attention.k"),
        get("attention.v"),
        3,
    );
    assert_close("attention", &y, get("attention.y"));
}

#[test]
fn timestep_embeddings_match_diffusers() {
    let t = &get("temb.t").data;
    for (name, dim, flip, shift) in [
        ("temb_128_noflip_shift1", 128, false, 1.0),
        ("temb_32_flip_shift0", 32, true, 0.0),
        ("temb_33_flip_shift1", 33, true, 1.0),
    ] {
        let y = ops::timestep_embedding(t, dim, flip, shift);
        let reference = get(&format!("{name}.y"));
        assert_close(name, &y, reference);
        // Elementwise: the f32 argument rounding is reproduced, so sin/cos agree to ~1 ulp.
        let (max_abs, at) = max_abs_diff(&y.data, &reference.data);
        assert!(max_abs < 2e-7, "{name}: max abs {max_abs:.2e} at {at}");
    }
}

#[test]
fn nearest_upsample_and_concat() {
    let y = ops::upsample_nearest2x(get("upsample.x"));
    assert_eq!(y, *get("upsample.y"));
    let a = get("upsample.x");
    let c = ops::concat_channels(a, &ops::silu(a));
    assert_eq!(c.shape, vec![2, 6, 3, 4]);
    assert_eq!(&c.data[..36], &a.data[..36]);
    assert_eq!(&c.data[72..108], &a.data[36..72]);
    let sum = ops::add(a, a);
    assert!(sum.data.iter().zip(&a.data).all(|(s, x)| *s == 2.0 * x));
}
