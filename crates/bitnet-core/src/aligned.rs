//! Growable buffers whose first element sits on a 64-byte boundary (one cache line, one
//! AVX-512 vector).
//!
//! The batched kernels read activation rows in 64-byte vectors. A `Vec<i8>` or `Vec<f32>` is
//! only as aligned as its element type asks (in practice 16 bytes from the allocator, or 16
//! bytes past a page for the large blocks that `malloc` maps), so whether every such load
//! split across two cache lines depended on where the allocator put the buffer: the same
//! batch-16 decode step took 113-119 ms or 136-146 ms on the same weights, depending only on
//! how much the tokenizer had allocated before (BENCHMARKS.md, session 8).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

/// One cache line of storage.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A line of zero bytes.
const ZERO: Line = Line([0; 64]);

mod sealed {
    pub trait Sealed {}
    impl Sealed for i8 {}
    impl Sealed for i32 {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// Element types an [`AlignedVec`] can hold: plain numbers for which every bit pattern is a
/// valid value and whose alignment divides 64 (`i8`, `i32`, `f32`, `f16`).
pub trait Plain: Copy + Default + PartialEq + fmt::Debug + sealed::Sealed {}
impl Plain for i8 {}
impl Plain for i32 {}
impl Plain for f32 {}
impl Plain for half::f16 {}

/// A `Vec`-like buffer of `T` starting on a 64-byte boundary; it dereferences to `[T]`.
#[derive(Clone)]
pub struct AlignedVec<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Plain> AlignedVec<T> {
    /// An empty buffer (no allocation).
    pub const fn new() -> Self {
        Self {
            lines: Vec::new(),
            len: 0,
            _t: PhantomData,
        }
    }

    /// Resizes to `len` elements, filling new ones with `value` (like `Vec::resize`).
    pub fn resize(&mut self, len: usize, value: T) {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("AlignedVec: length overflows usize");
        let lines = bytes.div_ceil(size_of::<Line>());
        if lines > self.lines.len() {
            self.lines.resize(lines, ZERO);
        }
        let old = self.len;
        self.len = len;
        if len > old {
            self[old..].fill(value);
        }
    }

    /// Removes every element, keeping the allocation.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps the first `len` elements (no change if there are fewer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends one element.
    pub fn push(&mut self, value: T) {
        self.resize(self.len + 1, value);
    }

    /// Appends `values`.
    pub fn extend_from_slice(&mut self, values: &[T]) {
        let old = self.len;
        self.resize(old + values.len(), T::default());
        self[old..].copy_from_slice(values);
    }
}

impl<T: Plain> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Plain> Deref for AlignedVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `lines` holds at least `len * size_of::<T>()` initialized bytes (`resize`
        // grows it first), its pointer is aligned to 64 (and non-null, dangling only when
        // `len` is 0), which satisfies `T`'s alignment, and every bit pattern is a valid `T`
        // (`Plain`).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`; the exclusive borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> From<&[T]> for AlignedVec<T> {
    fn from(values: &[T]) -> Self {
        let mut v = Self::new();
        v.extend_from_slice(values);
        v
    }
}

impl<T: Plain> From<Vec<T>> for AlignedVec<T> {
    fn from(values: Vec<T>) -> Self {
        Self::from(values.as_slice())
    }
}

impl<T: Plain> FromIterator<T> for AlignedVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Vec<T>>())
    }
}

impl<T: Plain> PartialEq for AlignedVec<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Plain> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_aligned_and_keeps_its_values_through_growth() {
        let mut v = AlignedVec::<f32>::new();
        assert!(v.is_empty());
        for len in [1usize, 15, 16, 17, 1000, 3, 40_000] {
            let old = v.len();
            v.resize(len, 2.5);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            let kept = old.min(len);
            assert!(v[kept..].iter().all(|&x| x == 2.5));
            for (i, x) in v.iter_mut().enumerate() {
                *x = i as f32;
            }
        }
        v.clear();
        v.extend_from_slice(&[1.0, 2.0]);
        v.push(3.0);
        assert_eq!(&v[..], &[1.0, 2.0, 3.0]);
        v.truncate(5);
        v.truncate(1);
        assert_eq!(&v[..], &[1.0]);
        let c: AlignedVec<i8> = (0..100).map(|i| i as i8).collect();
        assert_eq!(c.as_ptr() as usize % 64, 0);
        assert_eq!(c[99], 99);
        assert_eq!(c, AlignedVec::from(c.to_vec()));
    }
}
