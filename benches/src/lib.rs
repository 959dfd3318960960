//! placeholder
pub mod digits;
