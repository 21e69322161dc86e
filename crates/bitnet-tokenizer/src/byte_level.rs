//! GPT-2's byte-level alphabet: the reversible byte <-> printable-char mapping that byte-level BPE
//! vocabularies (GGUF `gpt2` model, tokenizer.json `ByteLevel`) store their tokens in.
//!
//! Bytes that are printable in Latin-1 (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) map to the same code point;
//! the other 68 bytes map, in byte order, to U+0100..U+0143 (so a space is `Ġ`, a newline `Ċ`).

/// Whether byte `b` stands for itself in the alphabet.
const fn is_direct(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        if is_direct(b as u8) {
            table[b] = b as u8 as char;
        } else {
            // 256 + shifted is always a valid scalar value (at most U+0143).
            table[b] = match char::from_u32(256 + shifted) {
                Some(c) => c,
                None => '\0',
            };
            shifted += 1;
        }
        b += 1;
    }
    table
}

const fn build_char_to_byte() -> [i16; 324] {
    let table = build_byte_to_char();
    let mut out = [-1i16; 324];
    let mut b = 0usize;
    while b < 256 {
        out[table[b] as usize] = b as i16;
        b += 1;
    }
    out
}

static BYTE_TO_CHAR: [char; 256] = build_byte_to_char();
static CHAR_TO_BYTE: [i16; 324] = build_char_to_byte();

/// The alphabet char standing for byte `b`.
pub(crate) fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[usize::from(b)]
}

/// The byte that alphabet char `c` stands for, if `c` is in the alphabet.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let i = c as usize;
    CHAR_TO_BYTE.get(i).and_then(|&b| u8::try_from(b).ok())
}

/// Encodes raw bytes as an alphabet string (how vocabularies store a token).
pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| byte_to_char(b)).collect()
}

/// Decodes an alphabet string back to raw bytes; `None` if a char is outside the alphabet.
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_matching_gpt2() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'\t'), 'ĉ');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0xE9), 'é');
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('Ō'), None);
        assert_eq!(
            decode(&encode("héllo 😀".as_bytes())).as_deref(),
            Some("héllo 😀".as_bytes())
        );
    }
}
