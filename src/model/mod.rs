//! Loading diffusers UNet2DModel checkpoints and describing the network once for every backend.
