//! The calls filters make to services behind clusters of their own (a rate limit service,
//! a JWKS server): a request sent through the connection's own upstream pools, so the
//! service's cluster gets its balancing, health, TLS and circuit breakers like any other.
//! [`Services`] is implemented by `HttpConn`, and by stand-ins in unit tests.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};

/// What an exchange with a cluster brought back, whole.
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
}

/// A boxed future borrowing its caller.
pub(crate) type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a filter reaches a service's cluster: the connection's pools in the proxy
/// (`HttpConn`), a stand-in in unit tests.
pub(crate) trait Services: Sync {
    /// Sends `req` to an endpoint of `cluster` and reads the whole answer: over HTTP/2
    /// when `grpc` (whatever the cluster says), else as the cluster speaks.
    fn send<'a>(
        &'a self,
        cluster: &'a str,
        req: Request<Bytes>,
        grpc: bool,
    ) -> Pending<'a, Result<Reply, String>>;

    /// Sends `req` like [`Services::send`] from a task of its own, its answer read and
    /// dropped, given up after `timeout`.
    fn send_detached(&self, cluster: &str, req: Request<Bytes>, timeout: Duration);
}
