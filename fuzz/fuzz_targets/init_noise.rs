#![no_main]
// Body: ddim_wgpu::fuzz::init_noise (replayed on stable by tests/fuzz_replay.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| ddim_wgpu::fuzz::init_noise(data));
