//! The HTTP/2 server side of the load balancer, HAProxy's way: one task per connection that
//! reads frames, runs each stream's handler and writes every answer itself, a static-only
//! HPACK encoder, flow control both ways, and the limits that keep a client from making the
//! server work for nothing (rapid resets, CONTINUATION and control-frame floods).
//!
//! `frame` has the wire format, `hpack` and `huffman` the header compression, `server` the
//! connection, `request` the checked request head and `body` the request body handed to a
//! stream's handler.

pub mod body;
pub mod frame;
pub mod hpack;
mod huffman;
pub mod request;
pub mod server;

pub use body::RequestBody;
pub use request::RequestHead;
pub use server::{Options, Reply, serve};
