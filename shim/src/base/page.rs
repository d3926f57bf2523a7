//! The page: its size and the arithmetic on addresses and lengths, in one place.
//!
//! The shim tracks, protects and copies memory in base pages (anonymous huge pages are
//! split to 4 KiB under write-protection, see DESIGN.md), so every module speaks in these.

/// Bytes in a page.
pub const PAGE: usize = 4096;
const SHIFT: u32 = PAGE.trailing_zeros();

/// The start of the page holding `addr`.
#[inline]
pub const fn floor(addr: usize) -> usize {
    addr & !(PAGE - 1)
}

/// `n` rounded up to a whole number of pages (wrapping past the top of the address
/// space, as the kernel's own rounding of a length does before it refuses it).
#[inline]
pub const fn ceil(n: usize) -> usize {
    n.wrapping_add(PAGE - 1) & !(PAGE - 1)
}

/// The number of the page holding `addr` (its address over the page size).
#[inline]
pub const fn number(addr: usize) -> usize {
    addr >> SHIFT
}

/// The address of page number `n`.
#[inline]
pub const fn address(n: usize) -> usize {
    n << SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_arithmetic() {
        assert_eq!(floor(0x1fff), 0x1000);
        assert_eq!(floor(0x2000), 0x2000);
        assert_eq!(ceil(1), PAGE);
        assert_eq!(ceil(PAGE), PAGE);
        assert_eq!(ceil(0), 0);
        assert_eq!(number(0x3456), 3);
        assert_eq!(address(3), 0x3000);
        assert_eq!(address(number(0x7fff_1234)), floor(0x7fff_1234));
    }
}
