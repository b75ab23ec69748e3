//! What kindnetd tells the world: the HTTP endpoints ([`http`]), the
//! Prometheus [`metrics`], readiness and liveness ([`status`]), the
//! [`effective`] configuration, and one escaping rule for outside names in
//! `/readyz`, the log and the doctor ([`text`]).

pub mod effective;
pub mod http;
pub mod metrics;
pub mod status;
pub mod text;
