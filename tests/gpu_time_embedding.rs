//! The time embedding's pluggable projections (sinusoid, Gaussian Fourier, learned rows) through
//! the MLP, and class embeddings added to the per-step table (`add_class_rows`: the label-indexed
//! `class_embedding.weight` rows and the `timestep`-type class MLP), against the CPU ops, with
//! batch 3 and widths that are not multiples of the 64-wide workgroup.

mod common;

use ddim_wgpu::cpu::ops;
use ddim_wgpu::gpu::context::run_dispatches;
use ddim_wgpu::gpu::kernels::time_embedding::{add_class_rows, embedding_mlp, Projection};
use ddim_wgpu::gpu::{GpuWeights, Precision};
use ddim_wgpu::model::unet::{Linear, TimeEmbedding, TimeProj};
use ddim_wgpu::model::{UNet, UNet2DConfig, Weights};
use ddim_wgpu::Tensor;

/// 2 steps × batch 3.
fn timesteps() -> Vec<Vec<f32>> {
    vec![vec![80.0, 0.5, 3.25], vec![0.002, 17.0, 1.0]]
}

/// The bundled-size model's sinusoid: (dim, flip_sin_to_cos, freq_shift).
fn positional(te: &TimeEmbedding) -> (usize, bool, f32) {
    match te.proj {
        TimeProj::Positional {
            dim,
            flip_sin_to_cos,
            freq_shift,
        } => (dim, flip_sin_to_cos, freq_shift),
        ref other => panic!("expected a positional embedding, got {other:?}"),
    }
}

struct Model {
    unet: UNet,
    weights: Weights,
}

fn model() -> Model {
    let config = UNet2DConfig::mnist_like();
    Model {
        unet: UNet::new(&config, 32, 32).unwrap(),
        weights: Weights::random(&config, 7).unwrap(),
    }
}

impl Model {
    /// `linear_2(silu(linear_1(x)))` on the CPU.
    fn mlp(&self, x: &Tensor) -> Tensor {
        let lin = |t: &Tensor, l: &Linear| {
            let w = self.weights.get(&l.weight).unwrap();
            ops::linear(t, w, Some(self.weights.slice(&l.bias).unwrap()))
        };
        let te = &self.unet.time;
        lin(&ops::silu(&lin(x, &te.linear_1)), &te.linear_2)
    }
}

/// Fourier features against the formula in f64 (|p| reaches ~1e3 here, where one f32 rounding
/// of p moves sin by ~6e-5: the tolerance is that, not the MLP's), and the learned rows exactly;
/// then each through the GPU MLP against the CPU MLP of the same projection.
#[test]
fn fourier_and_learned_projections_through_the_mlp() {
    let m = model();
    let te = &m.unet.time;
    let (dim, _, _) = positional(te);
    let flat: Vec<f32> = timesteps().concat();
    // Gaussian weights of scale 16 as diffusers initialises them (only dim/2 of them).
    let w: Vec<f32> = common::random(dim / 2, 3)
        .iter()
        .map(|v| 16.0 * v)
        .collect();
    let fourier = Projection::Fourier { weight: &w };
    let got = fourier.project(&flat).unwrap();
    let mut worst = 0.0f64;
    for (row, &t) in got.chunks(dim).zip(&flat) {
        for (i, &wi) in w.iter().enumerate() {
            let p = (t as f64).ln() * wi as f64 * 2.0 * std::f64::consts::PI;
            worst = worst.max((row[i] as f64 - p.sin()).abs());
            worst = worst.max((row[dim / 2 + i] as f64 - p.cos()).abs());
        }
    }
    eprintln!("fourier features vs f64: max abs {worst:.2e}");
    assert!(
        worst < FOURIER_F64_MAX_ABS,
        "fourier features off by {worst}"
    );

    // A learned table of 20 rows; timesteps must be whole.
    let table = common::random(20 * dim, 4);
    let learned = Projection::Learned { table: &table, dim };
    let whole: Vec<Vec<f32>> = vec![vec![0.0, 19.0, 7.0], vec![3.0, 3.0, 12.0]];
    let rows = learned.project(&whole.concat()).unwrap();
    for (r, &t) in rows.chunks(dim).zip(&whole.concat()) {
        assert_eq!(r, &table[t as usize * dim..][..dim]);
    }
    assert!(learned.project(&[2.5]).is_err(), "a fractional step");
    assert!(learned.project(&[20.0]).is_err(), "a step past the table");
    assert!(fourier.project(&[0.0]).is_err(), "σ = 0");

    common::for_each_backend(|backend, ctx| {
        let uploaded = GpuWeights::upload(ctx, &m.unet, &m.weights).unwrap();
        let mlp = (&te.linear_1, &te.linear_2);
        for (name, projection, steps) in [
            ("fourier", fourier, timesteps()),
            ("learned", learned, whole.clone()),
        ] {
            let (d, emb) = embedding_mlp(ctx, &projection, mlp, &uploaded, &steps).unwrap();
            run_dispatches(ctx, &d, 0).unwrap();
            let x =
                Tensor::new(vec![6, dim], projection.project(&steps.concat()).unwrap()).unwrap();
            let want = m.mlp(&x);
            let got: Vec<f32> = emb.read(ctx).unwrap().concat();
            let err = common::assert_close(
                &format!("{name} embedding on {backend}"),
                &got,
                &want.data,
                common::KERNEL_TOL,
            );
            eprintln!("{name} embedding on {backend}: rel L2 {err:.2e}");
        }
    });
}

/// One f32 rounding of p (|p| up to ~1e3: ulp 6e-5) before sin/cos, as torch rounds it.
const FOURIER_F64_MAX_ABS: f64 = 2e-4;

/// `emb[s, b] += rows[label[b]]` for a label-indexed table and for a `timestep`-type class MLP
/// (here the time MLP's layers stand in for `class_embedding.linear_1/2`), on the table the
/// resnets' projections read.
#[test]
fn class_rows_are_added_to_every_step() {
    let m = model();
    let te = &m.unet.time;
    let (proj_dim, flip, shift) = positional(te);
    let t = te.embed_dim();
    let steps = timesteps();
    let labels = [3usize, 0, 4];
    let k = 5;
    let class_table = common::random(k * t, 9);
    let sinus = ops::timestep_embedding(&steps.concat(), proj_dim, flip, shift);
    let time_emb = m.mlp(&sinus);
    // The timestep type: the class MLP of the labels' sinusoid, one row per image.
    let label_t: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let class_mlp = m.mlp(&ops::timestep_embedding(&label_t, proj_dim, flip, shift));
    let mut want_table = time_emb.data.clone();
    let mut want_mlp = time_emb.data.clone();
    for (r, (a, b)) in want_table
        .chunks_mut(t)
        .zip(want_mlp.chunks_mut(t))
        .enumerate()
    {
        let image = r % labels.len();
        for c in 0..t {
            a[c] += class_table[labels[image] * t + c];
            b[c] += class_mlp.data[image * t + c];
        }
    }

    common::for_each_backend(|backend, ctx| {
        let uploaded = GpuWeights::upload(ctx, &m.unet, &m.weights).unwrap();
        let mlp = (&te.linear_1, &te.linear_2);
        let sinusoid = Projection::of(&te.proj, &uploaded).unwrap();

        // Label-indexed rows.
        let (mut d, emb) = embedding_mlp(ctx, &sinusoid, mlp, &uploaded, &steps).unwrap();
        let rows = ctx
            .tensor_from(
                "class_embedding.weight",
                &class_table,
                &[k, t],
                Precision::F32,
            )
            .unwrap();
        d.push(add_class_rows(ctx, &emb, &rows, &labels).unwrap());
        run_dispatches(ctx, &d, 0).unwrap();
        let got: Vec<f32> = emb.read(ctx).unwrap().concat();
        let err = common::assert_close(
            &format!("class rows by label on {backend}"),
            &got,
            &want_table,
            common::KERNEL_TOL,
        );
        eprintln!("class rows by label on {backend}: rel L2 {err:.2e}");

        // The timestep type: its own one-step MLP, then rows 0..B.
        let (mut d, emb) = embedding_mlp(ctx, &sinusoid, mlp, &uploaded, &steps).unwrap();
        let (dc, class) = embedding_mlp(
            ctx,
            &sinusoid,
            mlp,
            &uploaded,
            std::slice::from_ref(&label_t),
        )
        .unwrap();
        d.extend(dc);
        let class_rows = class.tensor().reshape(&[labels.len(), t]).unwrap();
        d.push(add_class_rows(ctx, &emb, &class_rows, &[0, 1, 2]).unwrap());
        run_dispatches(ctx, &d, 0).unwrap();
        let got: Vec<f32> = emb.read(ctx).unwrap().concat();
        let err = common::assert_close(
            &format!("timestep-type class embedding on {backend}"),
            &got,
            &want_mlp,
            common::KERNEL_TOL,
        );
        eprintln!("timestep-type class embedding on {backend}: rel L2 {err:.2e}");

        // Bad labels and shapes are refused.
        let Err(e) = add_class_rows(ctx, &emb, &rows, &[0, 5, 1]) else {
            panic!("{backend}: label 5 of 5 rows was accepted");
        };
        assert!(format!("{e:#}").contains("outside 0..5"), "{e:#}");
        let Err(e) = add_class_rows(ctx, &emb, &rows, &[0, 1]) else {
            panic!("{backend}: two labels for three images were accepted");
        };
        assert!(format!("{e:#}").contains("2 labels"), "{e:#}");
        let narrow = ctx.tensor("narrow", &[k, t - 1], Precision::F32);
        let Err(e) = add_class_rows(ctx, &emb, &narrow, &labels) else {
            panic!("{backend}: rows of the wrong width were accepted");
        };
        assert!(format!("{e:#}").contains("are not"), "{e:#}");
    });
}
