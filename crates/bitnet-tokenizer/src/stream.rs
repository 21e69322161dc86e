//! Streaming detokenization: generated ids in, text out as soon as it forms whole characters.
//!
//! Byte-level tokens often end in the middle of a UTF-8 character (an emoji is commonly two or
//! more tokens), so the decoder keeps an incomplete tail until the next token completes it.
//! Bytes that can never become valid UTF-8 are emitted as U+FFFD right away, so the text
//! streamed so far plus [`StreamDecoder::finish`] always equals `String::from_utf8_lossy` of
//! all the tokens' bytes, i.e. [`crate::Tokenizer::decode`] of the whole sequence.

use crate::error::Result;
use crate::{PieceDecoding, Tokenizer, TokenizerError};

/// Incremental decoder over one generated sequence. Create it with
/// [`Tokenizer::stream_decoder`]; feed every generated id to [`StreamDecoder::push`].
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// Bytes of an incomplete UTF-8 character waiting for the next token (at most 3).
    pending: Vec<u8>,
    /// Nothing has been emitted yet (SentencePiece decoders drop the first leading space).
    at_start: bool,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder that drops control tokens (BOS, EOT, ...) when `skip_special` is set.
    pub fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        StreamDecoder {
            tokenizer,
            skip_special,
            pending: Vec::new(),
            at_start: true,
        }
    }

    /// Adds one token; returns the text it completes, if any (never part of a character).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        let bytes = self
            .tokenizer
            .token_bytes(id)
            .ok_or(TokenizerError::IdOutOfRange {
                id,
                vocab_size: self.tokenizer.vocab_size(),
            })?;
        if self.skip_special && self.tokenizer.is_special(id) {
            return Ok(None);
        }
        let mut bytes = bytes.as_slice();
        if self.at_start {
            if let PieceDecoding::SentencePiece {
                strip_leading_space: true,
            } = self.tokenizer.decoding
                && let Some(rest) = bytes.strip_prefix(b" ")
            {
                bytes = rest;
            }
            if !bytes.is_empty() {
                self.at_start = false;
            }
        }
        self.pending.extend_from_slice(bytes);
        let out = drain_valid(&mut self.pending);
        Ok((!out.is_empty()).then_some(out))
    }

    /// Ends the sequence: returns what is still buffered (an incomplete character becomes
    /// U+FFFD), or `None` if nothing is. The decoder can then start a new sequence.
    pub fn finish(&mut self) -> Option<String> {
        self.at_start = true;
        if self.pending.is_empty() {
            return None;
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(out)
    }

    /// Whether bytes of an incomplete character are buffered.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Takes the longest prefix of `buf` that can be emitted now: valid characters, with invalid
/// sequences as U+FFFD; leaves an incomplete trailing character in `buf`.
fn drain_valid(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        let rest = buf.get(start..).unwrap_or(&[]);
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                start = buf.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                if let Some(s) = rest.get(..valid).and_then(|v| std::str::from_utf8(v).ok()) {
                    out.push_str(s);
                }
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        start += valid + n;
                    }
                    None => {
                        start += valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..start.min(buf.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream_bytes(chunks: &[Vec<u8>]) -> Vec<String> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for c in chunks {
            buf.extend_from_slice(c);
            out.push(drain_valid(&mut buf));
        }
        out.push(String::from_utf8_lossy(&buf).into_owned());
        out
    }

    #[test]
    fn buffers_split_characters() {
        let e = "😀".as_bytes().to_vec();
        let chunks = vec![
            e[..1].to_vec(),
            e[1..3].to_vec(),
            e[3..].to_vec(),
            b"!".to_vec(),
        ];
        assert_eq!(stream_bytes(&chunks), vec!["", "", "😀", "!", ""]);
    }

    #[test]
    fn invalid_bytes_become_replacement_immediately() {
        let chunks = vec![vec![b'a', 0xFF, b'b'], vec![0xE4, 0xBD], vec![b'c']];
        assert_eq!(
            stream_bytes(&chunks),
            vec!["a\u{FFFD}b", "", "\u{FFFD}c", ""]
        );
    }

    proptest! {
        #[test]
        fn streaming_equals_lossy_decoding_of_everything(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            cuts in proptest::collection::vec(0usize..64, 0..16),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= bytes.len()).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(bytes[prev..c].to_vec());
                prev = c;
            }
            let joined: String = stream_bytes(&chunks).concat();
            prop_assert_eq!(joined, String::from_utf8_lossy(&bytes).into_owned());
        }
    }
}
