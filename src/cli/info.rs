//! `ddim info`: what a model is (architecture, parameters, FLOPs per forward, weight dtype).

use super::model_args::ModelArgs;
use anyhow::Result;
use ddim_wgpu::model::unet::Op;
use ddim_wgpu::model::UNet;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Image height and width to describe (default: the config's sample_size).
    #[arg(long, num_args = 2, value_names = ["H", "W"], value_parser = super::numbers::at_least::<usize, 1>)]
    pub size: Option<Vec<usize>>,
    /// List every layer with its shapes, parameters and FLOPs.
    #[arg(long)]
    pub layers: bool,
    /// Print one JSON object (totals and every layer) instead of text.
    #[arg(long)]
    pub json: bool,
}

fn op_kind(op: &Op) -> &'static str {
    match op {
        Op::CenterInput => "center_input",
        Op::Conv(_) => "conv2d",
        Op::Resnet(_) => "resnet",
        Op::Attention(_) => "attention",
        Op::UpsampleNearest2x => "upsample_nearest2x",
        Op::GroupNormSilu(_) => "group_norm_silu",
        Op::PushSkip { .. } => "push_skip",
        Op::ConcatSkip { .. } => "concat_skip",
        Op::SkipImageCapture => "skip_image_capture",
        Op::SkipImageDown(_) => "skip_image_down",
        Op::SkipImageUp { .. } => "skip_image_up",
        Op::SkipImageAdd => "skip_image_add",
        Op::DivideBySigma => "divide_by_sigma",
    }
}

fn print_json(unet: &UNet, source: &str, dtype: &str) -> Result<()> {
    let shape = |s: ddim_wgpu::model::unet::Shape| serde_json::json!([s.c, s.h, s.w]);
    let layers: Vec<serde_json::Value> = unet
        .layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "name": l.name,
                "op": op_kind(&l.op),
                "summary": op_summary(&l.op),
                "input": shape(l.input),
                "output": shape(l.output),
                "params": l.params,
                "flops": l.flops,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "model": source,
        "input": shape(unet.input),
        "output": shape(unet.output),
        "params": unet.params(),
        "tensors": unet.weights().len(),
        "flops_per_image": unet.flops(),
        "weight_dtype": dtype,
        "layers": layers,
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn op_summary(op: &Op) -> String {
    match op {
        Op::CenterInput => "2x-1".into(),
        Op::Conv(c) => format!(
            "conv {}x{} s{} {}->{}",
            c.kernel, c.kernel, c.stride, c.in_channels, c.out_channels
        ),
        Op::Resnet(r) => format!(
            "resnet {}->{}{}{}",
            r.in_channels,
            r.out_channels,
            if r.shortcut.is_some() {
                " (1x1 shortcut)"
            } else {
                ""
            },
            match r.resample {
                None => String::new(),
                Some(s) => format!(", resampled {s:?}"),
            }
        ),
        Op::Attention(a) => format!("attention {} heads x {}", a.heads, a.head_dim),
        Op::UpsampleNearest2x => "nearest 2x".into(),
        Op::GroupNormSilu(n) => format!("group norm ({} groups) + silu", n.groups),
        Op::PushSkip { slot } => format!("push skip {slot}"),
        Op::ConcatSkip { slot } => format!("concat skip {slot}"),
        Op::SkipImageCapture => "image path = input".into(),
        Op::SkipImageDown(c) => format!("image path FIR down, + 1x1 conv 3->{}", c.out_channels),
        Op::SkipImageUp { upsample, project } => format!(
            "image path {}{}",
            if *upsample { "FIR up" } else { "= 0" },
            if project.is_some() {
                ", + 3x3 conv of silu(norm(h))"
            } else {
                ""
            }
        ),
        Op::SkipImageAdd => "output + image path".into(),
        Op::DivideBySigma => "output / sigma".into(),
    }
}

pub fn run(args: Args) -> Result<()> {
    let loaded = args.model.load(0)?;
    let (config, source) = (loaded.pipeline.model.config, loaded.label);
    let dtype = match args.model.arch {
        Some(_) => "none (random weights)".to_string(),
        None => loaded.dtype,
    };
    let unet = match &args.size {
        Some(s) => UNet::new(&config, s[0], s[1])?,
        None => UNet::from_config(&config)?,
    };
    if args.json {
        return print_json(&unet, &source, &dtype);
    }
    println!("model:        {source}");
    println!("input:        {} -> output {}", unet.input, unet.output);
    println!("blocks:       down {:?}", config.down_block_types);
    println!("              up   {:?}", config.up_block_types);
    println!(
        "              mid  {}",
        config.mid_block_type.as_deref().unwrap_or("none")
    );
    println!(
        "channels:     {:?}, {} layers per block, {} norm groups",
        config.block_out_channels,
        config.layers_per_block,
        config
            .norm_num_groups
            .map_or("min(C/4, 32)".to_string(), |g| g.to_string())
    );
    let count = |f: fn(&Op) -> bool| unet.layers.iter().filter(|l| f(&l.op)).count();
    println!(
        "layers:       {} resnets, {} attentions, {} convs, {} skip connections",
        count(|o| matches!(o, Op::Resnet(_))),
        count(|o| matches!(o, Op::Attention(_))),
        count(|o| matches!(o, Op::Conv(_))),
        unet.skips.len()
    );
    println!(
        "parameters:   {} ({} tensors)",
        unet.params(),
        unet.weights().len()
    );
    let conv_flops: u64 = unet
        .layers
        .iter()
        .map(|l| match &l.op {
            Op::Conv(_) => l.flops,
            Op::Resnet(r) => l.flops - r.time_emb_proj.flops(),
            _ => 0,
        })
        .sum();
    println!(
        "FLOPs:        {:.3} GFLOP per image per forward ({:.3} in convolutions)",
        unet.flops() as f64 / 1e9,
        conv_flops as f64 / 1e9
    );
    println!("weight dtype: {dtype}");
    if args.layers {
        println!();
        println!(
            "{:<44} {:<32} {:>14} {:>14} {:>10} {:>10}",
            "layer", "op", "input", "output", "params", "MFLOP"
        );
        for l in &unet.layers {
            println!(
                "{:<44} {:<32} {:>14} {:>14} {:>10} {:>10.2}",
                l.name,
                op_summary(&l.op),
                l.input.to_string(),
                l.output.to_string(),
                l.params,
                l.flops as f64 / 1e6
            );
        }
    }
    Ok(())
}
