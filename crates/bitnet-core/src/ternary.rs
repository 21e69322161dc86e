use crate::CoreError;

/// A ternary weight matrix as every format decodes it: codes in {-1, 0, +1}, row-major
/// `[rows = out_features, cols = in_features]`, and the single per-tensor scale `s_w` so that
/// `W = t * s_w`.
///
/// This is the hand-off format between readers and backends: each backend repacks it once into
/// its own layout ([`crate::LinearKernel::prepare`]) and may drop it afterwards.
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryMatrix {
    rows: usize,
    cols: usize,
    codes: Vec<i8>,
    scale: f32,
}

impl TernaryMatrix {
    /// Checks the shape, that every code is ternary and that the scale is usable.
    pub fn new(rows: usize, cols: usize, codes: Vec<i8>, scale: f32) -> Result<Self, CoreError> {
        let expected = rows.saturating_mul(cols);
        if codes.len() != expected {
            return Err(CoreError::Length {
                what: "ternary codes".into(),
                expected,
                found: codes.len(),
            });
        }
        // A vectorized pass first (2B4T has 2 G codes); the first bad code only when there is one.
        let bad = codes.chunks(1 << 16).any(|c| {
            c.iter()
                .fold(0u8, |a, &x| a | u8::from((x as u8).wrapping_add(1) > 2))
                != 0
        });
        if let Some(index) = bad
            .then(|| codes.iter().position(|c| !(-1..=1).contains(c)))
            .flatten()
        {
            return Err(CoreError::NotTernary {
                code: codes[index],
                index,
            });
        }
        if !scale.is_finite() || scale < 0.0 {
            return Err(CoreError::BadScale(scale));
        }
        Ok(Self {
            rows,
            cols,
            codes,
            scale,
        })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The per-tensor scale `s_w`.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Row-major codes.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// One row of codes.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.codes[r * self.cols..(r + 1) * self.cols]
    }

    /// Rows `start..start + n` as a matrix of their own, same scale (copied, not re-checked:
    /// they are this matrix's checked codes). Panics past the last row, as slicing does.
    pub fn rows_range(&self, start: usize, n: usize) -> TernaryMatrix {
        TernaryMatrix {
            rows: n,
            cols: self.cols,
            codes: self.codes[start * self.cols..(start + n) * self.cols].to_vec(),
            scale: self.scale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_ternary_code_is_found_past_the_vectorized_pass() {
        for bad in [2i8, -2, 127, -128] {
            let mut codes = vec![1i8; 300 * 700];
            codes[150_001] = bad;
            codes[200_000] = 5;
            match TernaryMatrix::new(300, 700, codes, 1.0) {
                Err(CoreError::NotTernary { code, index }) => {
                    assert_eq!((code, index), (bad, 150_001))
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(TernaryMatrix::new(300, 700, vec![-1; 300 * 700], 1.0).is_ok());
    }

    #[test]
    fn a_range_of_rows_is_those_rows() {
        let codes: Vec<i8> = (0..5 * 3).map(|i| (i % 3) as i8 - 1).collect();
        let m = TernaryMatrix::new(5, 3, codes, 0.25).unwrap();
        let part = m.rows_range(1, 3);
        assert_eq!((part.rows(), part.cols(), part.scale()), (3, 3, 0.25));
        assert_eq!(part.codes(), &m.codes()[3..12]);
    }
}
