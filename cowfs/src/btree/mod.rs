//! The copy-on-write B+tree. One tree type serves every branch's filesystem and the
//! pool catalog. Nodes are shadowed on first write in a transaction (Rodeh's lazy
//! reference counting): a shared node is copied and its children gain a reference; a
//! node owned only by this tree and born in this transaction is changed in place.

pub mod diff;
pub mod key;
pub mod node;
pub mod nodestore;
pub mod tree;

pub use key::Key;
pub use node::{Node, MAX_VALUE_LEN};
pub use nodestore::NodeStore;
