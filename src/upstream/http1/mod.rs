//! weir's own HTTP/1.1 client side, in three layers: [`codec`] (bytes to heads and body frames,
//! no I/O), [`conn`] (one backend connection, driven by the task of the request it carries), and
//! [`pool`] (the idle connections kept for reuse, which knows no protocol).

mod codec;
mod conn;
mod pool;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use codec::Error;
pub(crate) use conn::{BackendConn, Body, SendError, send};
pub(crate) use pool::IdlePool;
