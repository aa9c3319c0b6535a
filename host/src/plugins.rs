//! One plugin, from bytes to a callable: its manifest, its secrets and files (read confined to
//! its folder), its compiled code (cached), its [[test]] vectors, and the sandbox that runs it
//! (wasmtime narrowed to what tollgate uses). Knows nothing of chains, tenants' generations or HTTP.

pub mod compile_cache;
pub mod confine;
pub mod loader;
pub mod manifest;
pub mod oci;
pub mod plugin;
pub mod sandbox;
pub mod secrets;
pub mod vectors;
