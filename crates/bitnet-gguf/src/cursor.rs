//! A bounds-checked little-endian byte cursor: the only way the reader touches file bytes, so no
//! read can go past the end and no length read from the file can size an allocation before it is
//! checked against the bytes that remain.

use crate::error::{GgufError, Result};

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    /// Absolute offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes left after the cursor.
    pub(crate) fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    /// Takes `n` bytes, or fails naming `what` if fewer remain.
    pub(crate) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let truncated = || GgufError::Truncated {
            what: what.to_owned(),
            offset: self.offset(),
            needed: n,
            available: self.remaining(),
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 byte length, then that many UTF-8 bytes.
    pub(crate) fn string(&mut self, what: &str) -> Result<String> {
        let at = self.offset();
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(GgufError::Malformed {
                offset: at,
                reason: format!(
                    "{what} claims {len} bytes, but only {} bytes remain in the file",
                    self.remaining()
                ),
            });
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| GgufError::Malformed {
            offset: at,
            reason: format!("{what} is not valid UTF-8: {e}"),
        })
    }

    /// A u64 element count, refused unless `count * min_item_bytes` fits in the bytes that remain:
    /// whatever the header claims, nothing larger than the file is ever allocated.
    pub(crate) fn count(&mut self, min_item_bytes: u64, what: &str) -> Result<usize> {
        let at = self.offset();
        let count = self.u64(what)?;
        let fits = count
            .checked_mul(min_item_bytes)
            .is_some_and(|need| need <= self.remaining());
        match usize::try_from(count) {
            Ok(c) if fits => Ok(c),
            _ => Err(GgufError::Malformed {
                offset: at,
                reason: format!(
                    "{what} is {count}, but the {} bytes left in the file can hold at most {}",
                    self.remaining(),
                    self.remaining() / min_item_bytes.max(1)
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut c = Cursor::new(&[1, 0, 0, 0, 2]);
        assert_eq!(c.u32("x").unwrap(), 1);
        assert!(c.u32("y").is_err());
        assert_eq!(c.u8("z").unwrap(), 2);
        assert!(c.take(u64::MAX, "w").is_err());
        assert_eq!(c.remaining(), 0);
    }

    #[test]
    fn huge_counts_and_lengths_fail_fast() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        assert!(Cursor::new(&bytes).count(1, "n").is_err());
        assert!(Cursor::new(&bytes).string("s").is_err());
        let mut bytes = 2u64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        assert_eq!(Cursor::new(&bytes).count(8, "n").unwrap(), 2);
        assert!(Cursor::new(&bytes).count(9, "n").is_err());
        let bytes = [1, 0, 0, 0, 0, 0, 0, 0, 0xff];
        assert!(Cursor::new(&bytes).string("s").is_err(), "invalid UTF-8");
    }
}
