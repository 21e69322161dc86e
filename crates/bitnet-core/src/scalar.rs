//! The scalar reference kernel: obviously correct, the oracle every other backend is tested
//! against. It keeps one `i8` per weight so that nothing about packing can hide a bug.

use crate::kernel::{LinearKernel, PreparedLinear};
use crate::{CoreError, TernaryMatrix};

/// The portable reference backend.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScalarKernel;

impl LinearKernel for ScalarKernel {
    fn name(&self) -> &'static str {
        "scalar"
    }

    fn prepare(&self, weights: &TernaryMatrix) -> Result<Box<dyn PreparedLinear>, CoreError> {
        Ok(Box::new(ScalarLinear(weights.clone())))
    }
}

/// A ternary matrix held as plain codes.
#[derive(Clone, Debug)]
pub struct ScalarLinear(TernaryMatrix);

impl PreparedLinear for ScalarLinear {
    fn rows(&self) -> usize {
        self.0.rows()
    }

    fn cols(&self) -> usize {
        self.0.cols()
    }

    fn scale(&self) -> f32 {
        self.0.scale()
    }

    fn weight_bytes(&self) -> usize {
        self.rows() * self.cols()
    }

    fn matmul_i32(&self, x: &[i8], batch: usize, out: &mut [i32]) {
        let (rows, cols) = (self.rows(), self.cols());
        assert_eq!(x.len(), batch * cols, "matmul_i32: activation length");
        assert_eq!(out.len(), batch * rows, "matmul_i32: output length");
        for b in 0..batch {
            let xb = &x[b * cols..(b + 1) * cols];
            for o in 0..rows {
                out[b * rows + o] = self
                    .0
                    .row(o)
                    .iter()
                    .zip(xb)
                    .map(|(&t, &v)| t as i32 * v as i32)
                    .sum();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QuantizedActivations;

    #[test]
    fn small_product_by_hand() {
        let w = TernaryMatrix::new(2, 3, vec![1, 0, -1, -1, 1, 1], 2.0).unwrap();
        let p = ScalarKernel.prepare(&w).unwrap();
        let mut out = [0i32; 4];
        p.matmul_i32(&[10, 20, 30, -1, -2, -3], 2, &mut out);
        assert_eq!(out, [-20, 40, 2, -4]);

        let mut q = QuantizedActivations::default();
        q.quantize(&[1.0, 0.5, -1.0], 1, 3);
        let mut y = [0.0f32; 2];
        p.forward(&q, &mut y, &mut Vec::new());
        // codes [127, 64, -127], s_x = 127: row0 = 254 / 127 * 2 = 4, row1 = -190 / 127 * 2.
        assert_eq!(*q.codes, [127, 64, -127]);
        assert_eq!(y[0], 4.0);
        assert_eq!(y[1], -190.0 / 127.0 * 2.0);
    }

    #[test]
    fn rejects_non_ternary() {
        assert!(TernaryMatrix::new(1, 2, vec![0, 2], 1.0).is_err());
        assert!(TernaryMatrix::new(1, 2, vec![0], 1.0).is_err());
        assert!(TernaryMatrix::new(1, 1, vec![0], f32::NAN).is_err());
    }
}
