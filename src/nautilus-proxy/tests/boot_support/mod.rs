//! The boot test's host side: installed tools and the VM.

pub mod deps;
pub mod vm;
