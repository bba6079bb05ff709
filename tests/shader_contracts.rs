//! One source of truth for each shader↔host contract, checked without a GPU:
//! * every WGSL uniform struct has the size and field offsets of its Rust `#[repr(C)]` twin
//!   (fields matched by name; `_pad*` fields are padding, covered by the size check);
//! * the flag bits and tile sizes that both sides define have the same values;
//! * conv2d's entry-point table lists exactly the shader's entry points;
//! * shaders/conv2d_rows.wgsl is what tests/support/conv2d_rows.rs generates, byte for byte.

#[path = "support/conv2d_rows.rs"]
mod conv2d_rows;

use std::mem::{offset_of, size_of};
use std::path::Path;

use ddim_wgpu::gpu::kernels::{
    attention, consistency, conv2d, ddim_step, elementwise, group_norm, guide, linear, multistep,
    resample, sigma_step, smoke, threshold, time_embedding, SHADERS,
};

/// A Rust struct's size and the offset of each of its fields.
struct HostLayout {
    name: &'static str,
    size: usize,
    fields: Vec<(&'static str, usize)>,
}

/// The layout of `$ty`, whose fields must all be listed: the pattern below has no `..`, so a
/// field added to the struct and not here fails to compile.
macro_rules! host_layout {
    ($ty:path { $($field:ident),* $(,)? }) => {{
        #[allow(dead_code)]
        fn every_field_listed(v: $ty) {
            let $ty { $($field: _),* } = v;
        }
        HostLayout {
            name: stringify!($ty),
            size: size_of::<$ty>(),
            fields: vec![$((stringify!($field), offset_of!($ty, $field))),*],
        }
    }};
}

/// (shader, WGSL struct, Rust twin) for every uniform struct of every shader.
fn uniform_twins() -> Vec<(&'static str, &'static str, HostLayout)> {
    vec![
        (
            "attention",
            "Params",
            host_layout!(attention::SoftmaxParams { rows, len, _pad }),
        ),
        (
            "conv2d",
            "Params",
            host_layout!(conv2d::Params {
                batch,
                src_h,
                src_w,
                c1,
                c2,
                out_h,
                out_w,
                cout,
                cout_v,
                kh,
                kw,
                stride,
                pad_top,
                pad_left,
                up_shift,
                flags,
                out_scale,
                m_total,
                m_groups_y,
                res_h,
                res_w,
                res_mode,
                _pad0,
                _pad1,
            }),
        ),
        (
            "ddim_step",
            "Params",
            host_layout!(ddim_step::Params {
                numel,
                per_sample,
                prediction,
                limit,
                clip_range,
                use_clipped,
                write_x0,
                _pad,
            }),
        ),
        // Deliberate name difference: the shader's `Step` is one row of the host's step table.
        (
            "ddim_step",
            "Step",
            host_layout!(ddim_step::StepRow {
                sqrt_a,
                sqrt_b,
                x0_coef,
                eps_coef,
                sample_coef,
                sigma,
                noise_offset,
                has_noise,
                step,
                _pad,
            }),
        ),
        (
            "elementwise",
            "Params",
            host_layout!(elementwise::Params {
                n,
                c1,
                c2,
                scale,
                shift,
                row_groups,
                _pad0,
                _pad1
            }),
        ),
        (
            "embedding",
            "Params",
            host_layout!(time_embedding::Params {
                rows,
                batch,
                width,
                row_groups,
            }),
        ),
        (
            "group_norm",
            "Params",
            host_layout!(group_norm::Params {
                batch,
                hw,
                channels,
                groups,
                chunk_pixels,
                num_chunks,
                eps,
                silu,
                width,
                out_h,
                out_w,
                resample,
                scale_shift,
                _pad0,
                _pad1,
                _pad2,
            }),
        ),
        ("linear", "Params", linear_params()),
        (
            "resample",
            "Params",
            host_layout!(resample::Params {
                batch,
                height,
                width,
                channels,
                out_h,
                out_w,
                mode,
                row_groups,
            }),
        ),
        ("linear_k4", "Params", linear_params()),
        (
            "consistency",
            "Params",
            host_layout!(consistency::Params {
                numel,
                clip,
                write_x0,
                _pad,
            }),
        ),
        (
            "consistency",
            "Step",
            host_layout!(consistency::StepRow {
                c_skip,
                c_out,
                noise,
                in_div,
                step,
                _pad,
            }),
        ),
        (
            "multistep",
            "Params",
            host_layout!(multistep::Params {
                numel,
                per_sample,
                prediction,
                thresholding,
                predicts_x0,
                rederive_eps,
                write_x0,
                last_offset,
                raw_output,
            }),
        ),
        // As for ddim_step: the shader's `Step` is one row of the host's step table.
        (
            "multistep",
            "Step",
            host_layout!(multistep::StepRow {
                sqrt_a,
                sqrt_b,
                pred_sample,
                pred_y0,
                corr_sample,
                corr_y0,
                corrects,
                save_last,
                pred_slots,
                corr_slots,
                write_slot,
                step,
                noise,
                writes,
            }),
        ),
        (
            "sigma_step",
            "Params",
            host_layout!(sigma_step::Params {
                numel,
                clip,
                clip_range,
                write_x0,
                saved_offset,
                ring,
                _pad,
            }),
        ),
        // The shader's `Step` is one row of the host's step table.
        (
            "sigma_step",
            "Step",
            host_layout!(sigma_step::StepRow {
                churn,
                x0_sample,
                x0_model,
                deriv_sigma,
                d0,
                noise,
                next_scale,
                has_noise,
                slots,
                from_saved,
                save_sample,
                write_slot,
                step,
            }),
        ),
        (
            "smoke",
            "Params",
            host_layout!(smoke::Params { n, a, _pad }),
        ),
        (
            "threshold",
            "Params",
            host_layout!(threshold::Params {
                per_sample,
                prediction,
                rank_lo,
                rank_hi,
                rank_weight,
                max_value,
                _pad,
            }),
        ),
        // guide.wgsl's uniform, in every shader it is appended to, and guide_std's.
        (
            "ddim_step",
            "Guide",
            host_layout!(guide::GuideParams {
                on,
                numel,
                per_sample,
                rescale,
                w,
                phi,
                keep,
                _pad,
            }),
        ),
        (
            "multistep",
            "Guide",
            host_layout!(guide::GuideParams {
                on,
                numel,
                per_sample,
                rescale,
                w,
                phi,
                keep,
                _pad,
            }),
        ),
        (
            "sigma_step",
            "Guide",
            host_layout!(guide::GuideParams {
                on,
                numel,
                per_sample,
                rescale,
                w,
                phi,
                keep,
                _pad,
            }),
        ),
        (
            "threshold",
            "Guide",
            host_layout!(guide::GuideParams {
                on,
                numel,
                per_sample,
                rescale,
                w,
                phi,
                keep,
                _pad,
            }),
        ),
        (
            "consistency",
            "Guide",
            host_layout!(guide::GuideParams {
                on,
                numel,
                per_sample,
                rescale,
                w,
                phi,
                keep,
                _pad,
            }),
        ),
        (
            "guide_std",
            "Guide",
            host_layout!(guide::GuideParams {
                on,
                numel,
                per_sample,
                rescale,
                w,
                phi,
                keep,
                _pad,
            }),
        ),
        // The head of the DDIM and multistep rows (each asserts it starts with these fields).
        (
            "threshold",
            "Level",
            host_layout!(threshold::Level { sqrt_a, sqrt_b }),
        ),
    ]
}

fn linear_params() -> HostLayout {
    host_layout!(linear::Params {
        m,
        n,
        k,
        inner_count,
        a_m,
        a_k,
        a_outer,
        a_inner,
        b_k,
        b_n,
        b_outer,
        b_inner,
        c_m,
        c_outer,
        c_inner,
        alpha,
        flags,
        a_base,
        b_base,
        c_base,
        out_scale,
        _pad,
    })
}

fn is_padding(field: &str) -> bool {
    field.starts_with("_pad")
}

fn parse(name: &str) -> naga::Module {
    let (_, source) = SHADERS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no shader {name} in kernels::SHADERS"));
    naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)))
}

/// Differences between a WGSL struct (its size from naga's layouter) and its Rust twin.
fn compare(
    what: &str,
    size: u32,
    members: &[naga::StructMember],
    host: &HostLayout,
) -> Vec<String> {
    let mut errors = Vec::new();
    if size as usize != host.size {
        errors.push(format!(
            "{what}: {size} bytes, {} has {}",
            host.name, host.size
        ));
    }
    let wgsl: Vec<(&str, usize)> = members
        .iter()
        .map(|m| (m.name.as_deref().unwrap_or("?"), m.offset as usize))
        .collect();
    for &(field, offset) in wgsl.iter().filter(|(f, _)| !is_padding(f)) {
        match host.fields.iter().find(|(f, _)| *f == field) {
            Some(&(_, host_offset)) if host_offset != offset => errors.push(format!(
                "{what}.{field}: offset {offset}, {}.{field} at {host_offset}",
                host.name
            )),
            Some(_) => {}
            None => errors.push(format!("{what}.{field}: no such field in {}", host.name)),
        }
    }
    for &(field, _) in host.fields.iter().filter(|(f, _)| !is_padding(f)) {
        if !wgsl.iter().any(|(f, _)| *f == field) {
            errors.push(format!("{}.{field}: no such field in {what}", host.name));
        }
    }
    errors
}

#[test]
fn uniform_structs_match_their_rust_twins() {
    let twins = uniform_twins();
    let mut checked = Vec::new();
    let mut errors = Vec::new();
    for (shader, _) in SHADERS {
        let module = parse(shader);
        let mut layouter = naga::proc::Layouter::default();
        layouter
            .update(module.to_ctx())
            .unwrap_or_else(|e| panic!("{shader}: layout: {e}"));
        for (_, var) in module.global_variables.iter() {
            if var.space != naga::AddressSpace::Uniform {
                continue;
            }
            let ty = &module.types[var.ty];
            let struct_name = ty.name.as_deref().unwrap_or("?");
            let what = format!("{shader}.wgsl {struct_name}");
            let naga::TypeInner::Struct { members, .. } = &ty.inner else {
                errors.push(format!("{what}: a uniform that is not a struct"));
                continue;
            };
            let Some((_, _, host)) = twins
                .iter()
                .find(|(s, n, _)| *s == shader && *n == struct_name)
            else {
                errors.push(format!("{what}: no Rust twin listed in uniform_twins()"));
                continue;
            };
            errors.extend(compare(&what, layouter[var.ty].size, members, host));
            checked.push((shader, struct_name.to_string()));
        }
    }
    for (shader, name, _) in &twins {
        if !checked.iter().any(|(s, n)| s == shader && n == name) {
            errors.push(format!("{shader}.wgsl has no uniform of type {name}"));
        }
    }
    assert!(errors.is_empty(), "\n{}", errors.join("\n"));
}

/// The value of the WGSL `const NAME: u32` in `shader`.
fn wgsl_u32(module: &naga::Module, shader: &str, name: &str) -> u32 {
    let (_, c) = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("{shader}.wgsl has no const {name}"));
    match module.global_expressions[c.init] {
        naga::Expression::Literal(naga::Literal::U32(v)) => v,
        ref e => panic!("{shader}.wgsl const {name} is not a u32 literal: {e:?}"),
    }
}

/// Asserts that each Rust `const` equals the WGSL `const` of the same name in each shader.
macro_rules! assert_consts_agree {
    ([$($shader:literal),+], $module:ident, [$($name:ident),+ $(,)?]) => {
        for shader in [$($shader),+] {
            let module = parse(shader);
            $(
                assert_eq!(
                    wgsl_u32(&module, shader, stringify!($name)),
                    $module::$name,
                    "{shader}.wgsl const {} differs from {}::{}",
                    stringify!($name),
                    stringify!($module),
                    stringify!($name),
                );
            )+
        }
    };
}

#[test]
fn flags_and_tile_sizes_agree() {
    assert_consts_agree!(
        ["conv2d"],
        conv2d,
        [
            HAS_CHAN_ADD,
            HAS_RESIDUAL,
            IMAGE_DIV,
            REG_TM,
            REG_TNV,
            REG_WG,
            ROW_WG,
            ROWS8_TP,
            ROWS16_TP,
            T_BM,
            T_BNV,
            TL_BM,
        ]
    );
    assert_consts_agree!(
        ["linear", "linear_k4"],
        linear,
        [HAS_BIAS, HAS_RESIDUAL, SILU_IN, SILU_OUT, BIAS_PER_ROW]
    );
    assert_consts_agree!(
        ["resample", "group_norm", "conv2d"],
        resample,
        [RS_NONE, RS_AVG_POOL, RS_FIR_DOWN, RS_FIR_UP, RS_NEAREST]
    );
}

#[test]
fn conv2d_entry_table_lists_every_entry_point() {
    let module = parse("conv2d");
    let mut shader: Vec<&str> = module
        .entry_points
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    let mut table: Vec<&str> = conv2d::ENTRIES.iter().map(|e| e.name).collect();
    shader.sort();
    table.sort();
    assert_eq!(shader, table, "conv2d.wgsl entry points vs conv2d::ENTRIES");
}

#[test]
fn conv2d_rows_is_what_the_generator_writes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders/conv2d_rows.wgsl");
    let generated = conv2d_rows::source();
    if std::env::var_os("DDIM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        generated == committed,
        "shaders/conv2d_rows.wgsl differs from what tests/support/conv2d_rows.rs writes \
         (edit the generator, then rerun this test with DDIM_BLESS=1)"
    );
}
