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
        if let Some(index) = codes.iter().position(|c| !(-1..=1).contains(c)) {
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
}
