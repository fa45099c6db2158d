//! Bounds-checked packet access for the XDP program: every read of the frame
//! goes through [`ptr_at`], which the verifier can follow, and offsets are
//! clamped so that variable-length header walks stay provably bounded.

use aya_ebpf::programs::XdpContext;

/// Largest offset a header may start at; anything further is treated as
/// truncated. Keeps every offset the verifier sees within a known range.
pub const MAX_OFFSET: usize = 4096;

/// A pointer to a `T` at byte `off` of the frame, or `None` when the frame is
/// too short (or `off` is beyond [`MAX_OFFSET`]).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    if off > MAX_OFFSET {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Reads `N` bytes at `off`. Use `N >= 2`: for one byte the compiler turns
/// the bound check into `p >= end`, from which the verifier learns no range.
#[inline(always)]
pub fn bytes_at<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    let p = ptr_at::<[u8; N]>(ctx, off)?;
    // SAFETY: `ptr_at` checked that `N` bytes at `off` lie inside the frame;
    // `[u8; N]` has alignment 1.
    Some(unsafe { p.read_unaligned() })
}

/// Reads a big-endian `u16` at `off`.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, off: usize) -> Option<u16> {
    bytes_at::<2>(ctx, off).map(u16::from_be_bytes)
}
