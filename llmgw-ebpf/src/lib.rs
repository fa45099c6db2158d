#![no_std]
//! Exists so the userspace crate can name this package as a build dependency.
