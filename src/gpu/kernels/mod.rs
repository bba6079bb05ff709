//! One module per kernel family: params struct, bindings, dispatch size, FLOPs and bytes.

pub mod attention;
pub mod group_norm;
pub mod linear;
pub mod smoke;
