//! End-to-end tests: each starts the real `tollgate` binary on 127.0.0.1:0 with real components
//! built from `plugins/`, and speaks HTTP to it.

mod api;
mod author;
mod canary;
mod chain;
mod cli;
mod crypto;
mod deadlines;
mod decision_cache;
mod freshness;
mod handover;
mod hostile;
mod instances;
mod kubernetes;
mod languages;
mod managed;
mod observability;
mod oidc;
mod outbound;
mod overload;
mod registry;
mod reload;
mod sandbox;
mod slow_clients;
mod tenants;
mod tls;
