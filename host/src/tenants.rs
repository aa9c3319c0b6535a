//! The plugin directory as the server sees it: the operator's tenants file, each tenant's folder
//! scanned into a generation (with its plugins from OCI registries, `remote`), the registry of live generations and the reloader that swaps a new
//! one in (or refuses it and keeps the last good). Knows nothing of HTTP.

pub mod registry;
pub mod reload;
pub mod remote;
pub mod scan;
