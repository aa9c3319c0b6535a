//! The wire: the TokenReview format, the router and its handlers, the listener and TLS.
//! Owns everything a request touches before a review's input exists and after its verdict;
//! decides nothing (that is `policy`) and loads nothing (that is `tenants`).

pub mod handover;
pub mod listener;
pub mod review;
pub mod server;
pub mod tls;
