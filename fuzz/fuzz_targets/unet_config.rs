#![no_main]
// Body: ddim_wgpu::fuzz::unet_config (replayed on stable by tests/fuzz_replay.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| ddim_wgpu::fuzz::unet_config(data));
