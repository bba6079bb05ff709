//! The torch-compatible generator against streams recorded from PyTorch (tools/export_rng_fixtures.py).

use ddim_wgpu::rng::TorchRng;

#[test]
fn torch_randn_streams_match_pytorch() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rng/torch_randn.json"
    ))
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let seed = case["seed"].as_u64().unwrap();
        let mut rng = TorchRng::new(seed);
        for (d, draw) in case["draws"].as_array().unwrap().iter().enumerate() {
            let want: Vec<f32> = draw
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let got = rng.randn(want.len()).unwrap();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // torch's vectorised log/sin/cos differ from f64 math by a few ulp; the streams must align exactly.
            assert!(
                worst <= 1e-5,
                "seed {seed} draw {d} (n = {}): max abs difference {worst}",
                want.len()
            );
        }
    }
}
