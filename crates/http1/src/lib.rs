//! The HTTP/1 core shared by the load balancer and the web server: heads parsed with httparse
//! and rewritten for the next hop in one pass (`head`), bodies framed and moved between
//! connections (`body`), pooled keep-alive connections to servers (`pool`), one exchange on
//! such a connection with early answers heard (`exchange`), the buffers idle connections give
//! back (`recycle`), forwarding an `http::Request` from
//! hyper's side over those connections (`client`), the one rule for when a request may go to
//! another server (`retry`), upgraded connections (`tunnel`), the `Date` header of local
//! answers (`date`), a connection's lazily moved timer (`lazy_timer`), the client side of a connection both roles serve (`server`) and the
//! server connection over TCP or a Unix socket (`stream`).

pub mod body;
pub mod client;
pub mod coarse;
pub mod date;
pub mod exchange;
pub mod head;
pub mod lazy_timer;
pub mod pool;
pub mod recycle;
pub mod retry;
pub mod server;
pub mod stream;
pub mod tunnel;
